# syntax=docker/dockerfile:1
# sqs-poller as a small, non-root container, for builders with a registry:
#   docker build -t sqs-poller .
# Without a registry (as CI builds and tests it): scripts/image.sh build, which makes the same
# final stage on a Debian base of its own (deploy/image/Containerfile; tests/offline/image_recipe.rs
# keeps the two alike).
# Configure with a mounted file (-v ./poller.toml:/etc/sqs-poller/poller.toml:ro) or, with the
# default deploy/container.toml, through environment variables (QUEUE_URL, WORKER_URL, …).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# symbols stay (a panic names its function), the line tables go: as scripts/image.sh strips
RUN cargo build --release --locked --bin sqs-poller \
 && objcopy --strip-debug target/release/sqs-poller /src/sqs-poller

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/sqs-poller /usr/local/bin/sqs-poller
COPY deploy/container.toml /etc/sqs-poller/poller.toml
ENV SQS_POLLER_CONFIG=/etc/sqs-poller/poller.toml \
    SQS_POLLER_LOG_FORMAT=json
USER 10001:10001
EXPOSE 9464
STOPSIGNAL SIGTERM
# asks the service's own /healthz (server.listen of the configuration): no curl in the image
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/sqs-poller", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sqs-poller"]
CMD ["run"]
