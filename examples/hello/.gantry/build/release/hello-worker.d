/work/main/examples/hello/.gantry/build/release/hello-worker: /work/main/examples/hello/src/bin/hello-worker.rs
