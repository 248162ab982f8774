/work/main/examples/hello/.gantry/build/release/hello-web: /work/main/examples/hello/src/bin/hello-web.rs
