//! The two recipes of the container image make the same image: the Dockerfile (multi-stage, for
//! builders with a registry) and deploy/image/Containerfile (what CI builds with podman on a base
//! of its own, scripts/image.sh). After their FROM they must say the same thing, instruction by
//! instruction: the same files at the same places, user, environment, port, stop signal, health
//! check, entry point and command. The packages the Dockerfile installs are in the CI base, and
//! both strip the binary the same way.

use std::path::Path;

/// A recipe's instructions: continuation lines joined, comments and parser directives dropped,
/// each as (INSTRUCTION, its arguments with runs of spaces made one).
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => current.push_str(&format!("{head} ")),
            None => {
                current.push_str(trimmed);
                let words: Vec<&str> = current.split_whitespace().collect();
                out.push((words[0].to_ascii_uppercase(), words[1..].join(" ")));
                current.clear();
            }
        }
    }
    out
}

/// The stage that makes the image: everything after the last FROM.
fn final_stage(all: &[(String, String)]) -> Vec<(String, String)> {
    let from = all.iter().rposition(|(i, _)| i == "FROM").expect("a FROM");
    all[from + 1..].to_vec()
}

/// What an instruction puts into the image: a COPY by its source's file name and destination
/// (the two recipes copy from different places), RUN left out (the bases differ; see below).
fn contents(stage: &[(String, String)]) -> Vec<(String, String)> {
    stage
        .iter()
        .filter(|(i, _)| i != "RUN")
        .map(|(i, args)| {
            if i != "COPY" {
                return (i.clone(), args.clone());
            }
            let words: Vec<&str> = args.split(' ').filter(|w| !w.starts_with("--")).collect();
            let (destination, sources) = words.split_last().expect("COPY SOURCE… DEST");
            let names: Vec<&str> = sources.iter().map(|s| s.rsplit('/').next().unwrap()).collect();
            (i.clone(), format!("{} {destination}", names.join(" ")))
        })
        .collect()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

#[test]
fn the_dockerfile_and_the_ci_recipe_make_the_same_image() {
    let dockerfile = final_stage(&instructions(&read("Dockerfile")));
    let ci = final_stage(&instructions(&read("deploy/image/Containerfile")));
    assert_eq!(contents(&dockerfile), contents(&ci), "Dockerfile's final stage vs deploy/image/Containerfile");
    assert!(ci.iter().all(|(i, _)| i != "RUN"), "the CI recipe runs nothing: its base is made by mmdebstrap");
    // what the Dockerfile installs on its base, the CI base has
    let script = read("scripts/image.sh");
    let base_packages = script.split("base_packages=\"").nth(1).unwrap().split('"').next().unwrap();
    let base: Vec<&str> = base_packages.split(',').collect();
    let installed: Vec<String> = dockerfile
        .iter()
        .filter(|(i, _)| i == "RUN")
        .flat_map(|(_, args)| {
            let install = args.split("apt-get install").nth(1).unwrap_or("");
            let words = install.split("&&").next().unwrap().split_whitespace();
            words.filter(|w| !w.starts_with('-')).map(String::from).collect::<Vec<_>>()
        })
        .collect();
    assert!(!installed.is_empty(), "the Dockerfile's final stage installs its packages with apt-get");
    for package in &installed {
        assert!(base.contains(&package.as_str()), "{package} is installed by the Dockerfile but not in the CI base");
    }
    // both strip the binary alike (symbols kept, line tables gone)
    assert!(read("Dockerfile").contains("objcopy --strip-debug"), "the Dockerfile's build stage strips");
    assert!(script.contains("objcopy --strip-debug"), "scripts/image.sh strips");
}

#[test]
fn the_image_runs_as_a_numeric_non_root_user() {
    for path in ["Dockerfile", "deploy/image/Containerfile"] {
        let stage = final_stage(&instructions(&read(path)));
        let user = stage.iter().find(|(i, _)| i == "USER").map(|(_, a)| a.as_str()).expect("a USER");
        let ids: Vec<u32> = user.split(':').map(|id| id.parse().expect("numeric user and group")).collect();
        assert!(ids.iter().all(|&id| id != 0), "{path}: USER {user} is root");
    }
}

#[test]
fn the_recipe_reader_sees_what_differs() {
    let a = final_stage(&instructions("FROM x\nCOPY a/b /usr/b\nUSER 1\n"));
    let b = final_stage(&instructions("FROM y\nCOPY b /usr/b\nUSER 2\n"));
    assert_ne!(contents(&a), contents(&b));
    let c = final_stage(&instructions("FROM y\nRUN true\nCOPY --from=build /src/b \\\n  /usr/b\nUSER 1\n"));
    assert_eq!(contents(&a), contents(&c));
}
