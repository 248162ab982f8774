/work/main/examples/hello/.gantry/build/release/deps/hello_worker-68da7adafca92608.d: examples/hello/src/bin/hello-worker.rs

/work/main/examples/hello/.gantry/build/release/deps/hello_worker-68da7adafca92608: examples/hello/src/bin/hello-worker.rs

examples/hello/src/bin/hello-worker.rs:
