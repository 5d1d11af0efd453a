# syntax=docker/dockerfile:1
# Tollgate: `tollgate` (the gRPC server) and `tollgate-polar` (the Polar
# webhook adapter) on Debian slim, as a non-root user (uid/gid 10001).
#
#   docker build -t tollgate .
#   docker run -p 50051:50051 tollgate        # embedded SQLite in /var/lib/tollgate
#   docker run -p 8080:8080 -e TOLLGATE_POLAR_SERVER=... tollgate tollgate-polar

FROM rust:1.95-bookworm AS builder
WORKDIR /src
# Everything `cargo build` reads: the manifest and lock file, build.rs (protoc
# is vendored, so no system protoc), the protos, the migrations (embedded by
# sqlx::migrate!), the sources, and benches/ because Cargo.toml declares a
# bench target there and cargo refuses a manifest whose targets are missing.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
COPY migrations migrations
COPY src src
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate --bin tollgate-polar \
 && install -D -m 0755 target/release/tollgate target/release/tollgate-polar -t /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tollgate \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tollgate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/tollgate \
 && install -d -m 0755 /etc/tollgate \
 && printf '%s\n' \
      '# The image defaults: reachable from outside the container, data in the' \
      '# writable /var/lib/tollgate. Replace this file (the Helm chart mounts' \
      '# its own here) or point TOLLGATE_CONFIG elsewhere to change them.' \
      'listen = "0.0.0.0:50051"' \
      'data_dir = "/var/lib/tollgate"' \
      > /etc/tollgate/config.toml
COPY --from=builder /out/tollgate /out/tollgate-polar /usr/local/bin/
# The defaults live in a file rather than in TOLLGATE_LISTEN/TOLLGATE_DATA_DIR
# variables: environment variables beat the file, so image ENV would silently
# override the listen address of any config file mounted over this one.
ENV TOLLGATE_CONFIG=/etc/tollgate/config.toml
# tollgate-polar takes its settings from the environment only (no file), so
# its reachable default address can live here.
ENV TOLLGATE_POLAR_LISTEN=0.0.0.0:8080
USER 10001:10001
WORKDIR /var/lib/tollgate
EXPOSE 50051 8080
CMD ["tollgate", "serve"]
