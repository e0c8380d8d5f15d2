# Builds the `cohort360` binary and runs it on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p api --bin cohort360

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 cohort360
COPY --from=build /src/target/release/cohort360 /usr/local/bin/cohort360
USER cohort360
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/cohort360"]
CMD ["serve"]
