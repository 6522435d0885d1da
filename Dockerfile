# drayage: multi-stage build on Debian 12.
#   docker build -t drayage .
#   docker run -p 5000:5000 -v drayage-cache:/var/lib/drayage/cache drayage
# The config is /etc/drayage/drayage.yml (conf/drayage.yml); every key can be overridden with
# DRAYAGE_<PATH> environment variables, e.g. -e DRAYAGE_UPSTREAM_URL=https://registry.example.
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ meson ninja-build pkg-config \
      libevent-dev libcurl4-openssl-dev libssl-dev liblmdb-dev libyaml-cpp-dev libhttp-parser-dev \
      nlohmann-json3-dev libspdlog-dev libfmt-dev libpugixml-dev libcrypt-dev catch2 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY meson.build meson_options.txt ./
COPY include include
COPY src src
COPY tests tests
COPY bench bench
RUN meson setup /build -Dbuildtype=release \
 && ninja -C /build src/drayage \
 && strip /build/src/drayage

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libevent-2.1-7 libevent-openssl-2.1-7 libevent-pthreads-2.1-7 \
      libcurl4 libssl3 liblmdb0 libyaml-cpp0.7 libhttp-parser2.9 libspdlog1.10 libfmt9 \
      libpugixml1v5 libcrypt1 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/drayage --shell /usr/sbin/nologin drayage \
 && mkdir -p /var/lib/drayage/cache /etc/drayage \
 && chown -R drayage:drayage /var/lib/drayage
COPY --from=build /build/src/drayage /usr/local/bin/drayage
COPY conf/drayage.yml /etc/drayage/drayage.yml
USER drayage
VOLUME /var/lib/drayage/cache
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=3s CMD ["/usr/local/bin/drayage", "healthcheck", "--config", "/etc/drayage/drayage.yml"]
ENTRYPOINT ["/usr/local/bin/drayage"]
CMD ["--config", "/etc/drayage/drayage.yml"]
