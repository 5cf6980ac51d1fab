# The broker image the chart runs (ghcr.io/gocred/gocred). The runtime stage carries what the
# broker runs besides itself: `git` (it builds the modules of `kind = "git"` upstreams with
# git ls-remote/fetch/archive, see docs/git-modules.md) and the CA certificates.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/gocred /gocred

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /gocred /usr/local/bin/gocred
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gocred"]
CMD ["serve", "--config", "/etc/gocred/gocred.toml"]
