# syntax=docker/dockerfile:1
# taskmint container image: build with the pinned lock file, run as a
# non-root user on a minimal base with nothing but the binary and CA roots.
#   docker build -t taskmint:0.1.0 .
#   docker run --rm taskmint:0.1.0 --version
# The build needs crates.io only: protobuf is compiled in pure Rust (no
# protoc), and aws-lc-rs needs only the image's C compiler (no cmake).

# The toolchain the lock file is tested with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The library and the server only: the load generator (`bench`) stays out.
RUN cargo build --release --locked --no-default-features --bin taskmint \
 && cp target/release/taskmint /taskmint

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /taskmint /usr/local/bin/taskmint
# 8443 gRPC (mTLS); 9090 the ops listener (metrics, probes).
EXPOSE 8443 9090
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/taskmint"]
CMD ["serve", "--config", "/etc/taskmint/config/taskmint.toml", "--log-format", "json"]
