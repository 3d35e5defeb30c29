# outboxd container image: a build stage with the toolchain, a runtime stage
# with only the shared libraries outboxd links against.
#
#   docker build -t outboxd .
#   docker run --rm -v /path/to/outboxd.toml:/etc/outboxd/outboxd.toml:ro outboxd
#
# The image ships no configuration: mount one at /etc/outboxd/outboxd.toml (see
# config/examples/, copied to /usr/share/doc/outboxd/examples/, and
# docs/operations.md). outboxd logs to stderr and stops cleanly on SIGTERM; it
# can run as PID 1 (it does not start child processes).

FROM debian:bookworm AS build
WORKDIR /src
# The dependency list lives in one place; copy only it first so that the
# package layer is rebuilt only when the list changes.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh build && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DOUTBOXD_BUILD_TESTS=OFF \
 && cmake --build /build --target outboxd -j"$(nproc)" \
 && /build/daemon/outboxd --version

FROM debian:bookworm-slim
# Runtime libraries of the build above (Debian bookworm package names): every
# library outboxd links directly is listed here, not left to arrive as some
# other package's dependency. tests/integration/package_test.cc checks this
# list against `ldd` of the built binary (every library it loads must come from
# one of these packages or their dependencies), so a new library fails the
# suite before it fails an image. libprometheus-cpp-core1.0: /metrics.
# libssl3: the HTTP listener's TLS and basic authentication. ca-certificates:
# TLS to PostgreSQL (sslrootcert=system is not in bookworm's libpq 15, so
# point sslrootcert at a file) and to Kafka (librdkafka uses the system CA
# store). curl: the HEALTHCHECK.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      ca-certificates \
      curl \
      libfmt9 \
      libgcc-s1 \
      libpq5 \
      libprometheus-cpp-core1.0 \
      librdkafka1 \
      libspdlog1.10 \
      libssl3 \
      libstdc++6 \
      libsystemd0 \
      libtomlplusplus3 \
 && rm -rf /var/lib/apt/lists/*
# Fixed ids, so that mounted files can be made readable to the user, and
# numeric USER, so that Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 10001 outboxd \
 && useradd --system --uid 10001 --gid outboxd --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin outboxd \
 && install -d -m 0755 /etc/outboxd
COPY --from=build /build/daemon/outboxd /usr/local/bin/outboxd
COPY config/examples/ /usr/share/doc/outboxd/examples/
RUN if ldd /usr/local/bin/outboxd | grep 'not found'; then exit 1; fi \
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
