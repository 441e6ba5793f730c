# Shared by the memory profiles in scripts/profile/ (sourced): the service's part of a config for
# the test emulator, and the process's memory.

# The [aws], [server] and [shutdown] tables: the emulator at $EP, metrics on 127.0.0.1:$MPORT
# (a port below the ephemeral range, which a wide fleet's connections fill), no admin API.
# usage: service_toml GRACE_SECS
service_toml() {
  cat <<TOML
[aws]
region = "us-east-1"
endpoint_url = "$EP"
[server]
listen = "127.0.0.1:$MPORT"
admin_listen = ""
[shutdown]
grace_period_secs = $1
TOML
}

# VmHWM and VmRSS of PID, and what the resident memory is made of (RssAnon: the heap and stacks;
# RssFile: the binary's pages, clean, given back first under pressure), on one line.
memory_of() {
  grep -E 'VmHWM|VmRSS|RssAnon|RssFile' /proc/$1/status | tr -s ' ' | tr '\n' ' '
}
