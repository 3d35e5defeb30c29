# outboxd container image: the Debian package (scripts/package.sh) installed
# on a slim Debian base, so that the image and the package are one build.
#
#   docker build -t outboxd .
#   docker run --rm -v /path/to/outboxd.toml:/etc/outboxd/outboxd.toml:ro outboxd
#
# By default the package is built here, in a stage with the toolchain. With a
# package built already, only the runtime stage runs (the context is a
# directory holding that .deb; tests/integration/image_test.cc does this):
#
#   docker build --build-arg PACKAGE_STAGE=prebuilt -f Dockerfile DIR
#
# podman (buildah 1.28, Debian 12) skips a stage that only a FROM with the
# argument's default names: give it explicitly there,
#   podman build --build-arg PACKAGE_STAGE=build -t outboxd .
#
# The image's /etc/outboxd/outboxd.toml configures nothing: mount yours over
# it (see /usr/share/doc/outboxd/examples/ and docs/operations.md). outboxd
# logs to stderr and stops cleanly on SIGTERM; it can run as PID 1 (it does not
# start child processes).

ARG PACKAGE_STAGE=build

FROM debian:bookworm AS build
WORKDIR /src
# The dependency list lives in one place; copy only it first so that the
# package layer is rebuilt only when the list changes.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . .
RUN scripts/package.sh /build \
 && mkdir /out && cp /build/outboxd_*.deb /out/

FROM scratch AS prebuilt
COPY outboxd_*.deb /out/

FROM ${PACKAGE_STAGE} AS package

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="outboxd" \
      org.opencontainers.image.description="Relays transactional outbox events from PostgreSQL to Apache Kafka" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.vendor="outboxd developers" \
      org.opencontainers.image.base.name="debian:bookworm-slim"
# Fixed ids, so that mounted files can be made readable to the user, and
# numeric USER, so that Kubernetes' runAsNonRoot can verify it. Made before
# the package, whose postinst then keeps them.
RUN groupadd --system --gid 10001 outboxd \
 && useradd --system --uid 10001 --gid outboxd --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin outboxd
# The package's Depends (from dpkg-shlibdeps) bring every library the binary
# links. ca-certificates: TLS to PostgreSQL and Kafka. curl: the HEALTHCHECK.
# Documentation other than the copyright files and man pages is left out.
COPY --from=package /out/ /tmp/outboxd/
RUN printf 'path-exclude /usr/share/doc/*\npath-include /usr/share/doc/*/copyright\npath-include /usr/share/doc/outboxd/examples/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/locale/*\n' \
      > /etc/dpkg/dpkg.cfg.d/outboxd-slim \
 && apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl /tmp/outboxd/outboxd_*.deb \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log /tmp/outboxd \
 && if ldd /usr/bin/outboxd | grep 'not found'; then exit 1; fi \
 && outboxd --version
USER 10001:10001
# /metrics, /healthz and /readyz: the config must listen where the check
# looks, e.g. [http] listen = "0.0.0.0:9464" (all interfaces, so that
# Prometheus can scrape the container). Another port: run with
# -e OUTBOXD_HEALTHZ_URL=http://127.0.0.1:PORT/healthz.
ENV OUTBOXD_HEALTHZ_URL=http://127.0.0.1:9464/healthz
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD curl -fsS --max-time 4 -o /dev/null "$OUTBOXD_HEALTHZ_URL" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["outboxd"]
CMD ["run", "-c", "/etc/outboxd/outboxd.toml"]
