# DCD worker and starter images. Stages:
#   build        go build ./worker and ./starter (cgo: the ONNX Runtime binding)
#   ort          the ONNX Runtime CPU library, from the npm package
#                onnxruntime-node, as scripts/setup.sh fetches it
#   ort-gpu      ONNX Runtime's GPU build, from npm, as scripts/setup-gpu.sh
#                fetches it
#   runtime-gpu  GPU image: CUDA 13 + cuDNN 9 and ONNX Runtime's GPU build,
#                for `worker -queues gpu -ep cuda`
#   runtime      CPU image: worker, starter, libonnxruntime (the last stage,
#                so the default target)
# docker-compose.yml builds both runtimes. The image has no entrypoint: the
# command names the binary, e.g. `worker -queues cpu` or `starter run ...`.

ARG GO_VERSION=1.26.8
ARG ORT_VERSION=1.30.0
# The GPU stage's release and the npm package of its CUDA provider, those
# `make setup-gpu` fetches and the GPU runs of README's Performance used;
# the provider links CUDA 13.
ARG ORT_GPU_VERSION=1.29.0
ARG ORT_GPU_PROVIDERS=com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=1 go build -trimpath -o /out/worker ./worker \
 && CGO_ENABLED=1 go build -trimpath -o /out/starter ./starter

FROM node:22-bookworm-slim AS ort
ARG ORT_VERSION
WORKDIR /tmp/ort
# npm pack only downloads the tarball; `npm install` would run a post-install
# script that downloads from elsewhere.
RUN npm pack --silent "onnxruntime-node@${ORT_VERSION}" >/dev/null \
 && tar -xzf onnxruntime-node-*.tgz package/bin/napi-v6/linux/x64/libonnxruntime.so.1 \
 && install -D -m 644 package/bin/napi-v6/linux/x64/libonnxruntime.so.1 "/out/libonnxruntime.so.${ORT_VERSION}"

# ONNX Runtime's GPU build, from npm as scripts/setup-gpu.sh fetches it:
# onnxruntime-node's core (built with the CUDA provider bridge) and the
# CUDA provider of the same release from the onnxruntime-unity project's
# repackaging of the official linux-x64-gpu release.
FROM node:22-bookworm-slim AS ort-gpu
ARG ORT_GPU_VERSION
ARG ORT_GPU_PROVIDERS
WORKDIR /tmp/ort
RUN npm pack --silent "onnxruntime-node@${ORT_GPU_VERSION}" "${ORT_GPU_PROVIDERS}" >/dev/null \
 && tar -xzf onnxruntime-node-*.tgz package/bin/napi-v6/linux/x64/libonnxruntime.so.1 \
 && tar -xzf com.github.asus4.onnxruntime.linux-x64-gpu-*.tgz \
      package/Plugins/Linux/x64/libonnxruntime_providers_shared.so package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so \
 && grep -qaF "${ORT_GPU_VERSION}" package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so \
 && install -D -m 755 package/bin/napi-v6/linux/x64/libonnxruntime.so.1 /out/libonnxruntime.so \
 && install -m 755 package/Plugins/Linux/x64/libonnxruntime_providers_shared.so \
      package/Plugins/Linux/x64/libonnxruntime_providers_cuda.so /out/

# The base's CUDA major version must be the one the CUDA provider links
# (ldd libonnxruntime_providers_cuda.so): change both together.
FROM nvidia/cuda:13.0.0-cudnn-runtime-ubuntu24.04 AS runtime-gpu
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown 65532:65532 /data
COPY --from=ort-gpu /out/ /opt/onnxruntime/lib/
COPY --from=build /out/worker /out/starter /usr/local/bin/
ENV DCD_ORT_LIB=/opt/onnxruntime/lib/libonnxruntime.so \
    DCD_STORAGE=file:///data?create_dir=1
WORKDIR /data
USER 65532:65532
CMD ["worker", "-queues", "gpu", "-ep", "cuda"]

FROM debian:bookworm-slim AS runtime
ARG ORT_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir /data && chown 65532:65532 /data
COPY --from=ort /out/ /opt/onnxruntime/lib/
COPY --from=build /out/worker /out/starter /usr/local/bin/
ENV DCD_ORT_LIB=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION} \
    DCD_STORAGE=file:///data?create_dir=1
WORKDIR /data
USER 65532:65532
CMD ["worker"]
