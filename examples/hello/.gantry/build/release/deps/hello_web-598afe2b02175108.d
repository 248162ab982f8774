/work/main/examples/hello/.gantry/build/release/deps/hello_web-598afe2b02175108.d: examples/hello/src/bin/hello-web.rs

/work/main/examples/hello/.gantry/build/release/deps/hello_web-598afe2b02175108: examples/hello/src/bin/hello-web.rs

examples/hello/src/bin/hello-web.rs:
