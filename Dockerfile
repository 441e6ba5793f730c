# syntax=docker/dockerfile:1
# sqs-poller as a small, non-root container. Build: docker build -t sqs-poller .
# Configure with a mounted file (-v ./poller.toml:/etc/sqs-poller/poller.toml:ro) or, with the
# default deploy/container.toml, through environment variables (QUEUE_URL, WORKER_URL, …).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin sqs-poller

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home sqs-poller
COPY --from=build /src/target/release/sqs-poller /usr/local/bin/sqs-poller
COPY deploy/container.toml /etc/sqs-poller/poller.toml
ENV SQS_POLLER_CONFIG=/etc/sqs-poller/poller.toml
USER 10001
EXPOSE 9464
STOPSIGNAL SIGTERM
# asks the service's own /healthz (server.listen of the configuration): no curl in the image
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/sqs-poller", "healthcheck"]
ENTRYPOINT ["sqs-poller"]
CMD ["run"]
