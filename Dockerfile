# syntax=docker/dockerfile:1
#
# velro-authz container image: a static-ish Rust binary on distroless.
#
#   docker build -t velro-authz .
#   docker run --rm -e DATABASE_URL=postgres://... -e VELRO_AUTHZ_JWT_SECRET=... \
#     -e VELRO_AUTHZ_GRPC_ADDR=0.0.0.0:9191 -e VELRO_AUTHZ_HTTP_ADDR=0.0.0.0:8181 \
#     -p 9191:9191 -p 8181:8181 velro-authz
#
# Both listeners default to 127.0.0.1 (right for a sidecar sharing the pod's
# network with Envoy); set the *_ADDR variables to publish ports from a
# standalone container. Migrations (sqlx::migrate!), the default route table
# and the demo seed are compiled into the binary: the image needs no files.

# --- build ---------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# `--features jemalloc`: jemalloc as the allocator (builds it from C; this
# image has make and gcc), 10-15 % less CPU per Check than glibc's malloc.
# Cache mounts keep the crate registry and compiled dependencies between
# builds; the binary is copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --features jemalloc --bin velro-authz \
    && cp target/release/velro-authz /velro-authz

# --- runtime -------------------------------------------------------------
# glibc + libgcc, no shell, no package manager. TLS is rustls: no OpenSSL.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /velro-authz /velro-authz
# distroless's `nonroot` user, numerically (Kubernetes runAsNonRoot needs a number).
USER 65532:65532
# gRPC (ext_authz, health, reflection, admin) and HTTP (forward-auth, /healthz, /readyz, /metrics).
EXPOSE 9191 8181
ENTRYPOINT ["/velro-authz"]
CMD ["serve"]
