# sluice in a container: a static-ish release build on Debian, run as an unprivileged user.
#   docker build -t sluice .
#   docker run -p 25:2525 -v /etc/sluice:/etc/sluice:ro -v sluice-spool:/var/spool/sluice sluice
# The configuration's spool_dir should be /var/spool/sluice (a volume: the queue must outlive the container),
# and its listeners should use unprivileged ports (2525, 2587, 2465) mapped by docker.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p sluice --no-default-features

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home-dir /var/spool/sluice --shell /usr/sbin/nologin sluice \
    && mkdir -p /var/spool/sluice /etc/sluice \
    && chown sluice:sluice /var/spool/sluice \
    && chmod 0700 /var/spool/sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
RUN ln -s /usr/local/bin/sluice /usr/sbin/sendmail
USER sluice
VOLUME ["/var/spool/sluice"]
EXPOSE 2525 2587 2465
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve", "--config", "/etc/sluice/sluice.toml"]
