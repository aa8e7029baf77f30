# The operator image: a static binary on a distroless base, running as a non-root user.
#   docker build -t ghcr.io/consorzio/consorzio:0.1.0 .
FROM rust:1.95-bookworm AS build
RUN rustup target add x86_64-unknown-linux-musl \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV CC_x86_64_unknown_linux_musl=musl-gcc
RUN cargo build --release --locked --target x86_64-unknown-linux-musl -p consorzio \
 && cp target/x86_64-unknown-linux-musl/release/consorzio /consorzio

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /consorzio /usr/local/bin/consorzio
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/consorzio"]
CMD ["run"]
