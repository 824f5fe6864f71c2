# gatehouse container image.
#
#   docker build -t gatehouse .
#   docker run -p 8080:8080 -p 8443:8443 -v "$PWD/deploy:/etc/gatehouse" gatehouse
#
# /etc/gatehouse holds gatehouse.toml, policies/ and certs/ (see docs/src/docker.md).
# The listeners in that config must bind 0.0.0.0 to be reachable from outside;
# the admin listener (default 127.0.0.1:9901) stays inside and is not exposed.

# --- build ---------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Download dependencies in their own layer, so source changes do not refetch them.
# (benches/ too: cargo reads the [[bench]] targets to load the manifest.)
COPY Cargo.toml Cargo.lock ./
COPY benches benches
RUN cargo fetch --locked

COPY . .
RUN cargo build --release --locked --bin gatehouse

# --- runtime -------------------------------------------------------------
FROM debian:bookworm-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 gatehouse \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin gatehouse \
    && mkdir -p /etc/gatehouse/policies /etc/gatehouse/certs \
    && chown -R 10001:10001 /etc/gatehouse

COPY --from=build /src/target/release/gatehouse /usr/local/bin/gatehouse

USER 10001:10001
WORKDIR /etc/gatehouse
VOLUME ["/etc/gatehouse"]
EXPOSE 8080 8443

ENTRYPOINT ["gatehouse"]
CMD ["serve", "--config", "/etc/gatehouse/gatehouse.toml"]
