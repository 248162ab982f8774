//! A background worker for Gantry's example: says what it is doing every
//! second, on stdout, until it is stopped.

fn main() {
    let version = std::fs::read_to_string("VERSION")
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let queue = std::env::var("QUEUE").unwrap_or_else(|_| "default".to_owned());
    for tick in 1u64.. {
        println!("hello-worker version {version}: processed job {tick} from queue {queue}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}
