//! `gantry backup now` and `gantry backup restore` of a container's 1 GiB
//! volume, next to plain `tar | zstd` of the same directory and `zstd -d |
//! tar -x` back (time and size). Half the bytes are random, half repetitive
//! text, so the ratio says something. Prints one Markdown table; never
//! fails on a slow result. Needs root and Docker (the Redis test image is
//! built here).
//!
//! ```sh
//! cargo build --release -p gantry
//! cargo run --release -p gantry-bench --bin backup [-- --mib N]
//! ```
//!
//! `GANTRY_BIN=path` runs another build of the binary.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use gantry_bench::{gantry_binary, ms};
use gantry_testkit::TestProject;
use serde_json::Value;

const PROJECT: &str = "bench-backup";
/// Each file's size; the data is this many files.
const FILE_MIB: usize = 4;

fn main() -> ExitCode {
    let mib = std::env::args()
        .skip_while(|a| a != "--mib")
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(1024);
    let _cleanup = Cleanup;
    match run(mib) {
        Ok(table) => {
            print!("{table}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("backup bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(mib: usize) -> Result<String, String> {
    let bin = std::env::var_os("GANTRY_BIN").map_or_else(gantry_binary, PathBuf::from);
    if !bin.exists() {
        return Err(format!(
            "no {}: build it first (cargo build --release -p gantry)",
            bin.display()
        ));
    }
    let image = gantry_testkit::images::redis();
    let p = TestProject::new(&bin).file(
        "gantry.toml",
        &format!(
            "[project]\nname = \"{PROJECT}\"\n\n[services.db]\nimage = \"{image}\"\nport = 6379\nhealth = {{ tcp = true, interval = \"100ms\", timeout = \"1s\" }}\nvolumes = [\"data:/var/lib/redis\"]\nbackup = {{ schedule = \"0 3 * * *\", keep = 2 }}\n"
        ),
    );
    gantry(&p, &["deploy", "--skip-build"])?;
    let volume = PathBuf::from(
        shell(&format!(
            "docker volume inspect -f '{{{{.Mountpoint}}}}' gantry-{PROJECT}-local-data"
        ))?
        .trim(),
    );
    let data = volume.join("bench");
    fill(&data, mib).map_err(|e| format!("cannot write the data: {e}"))?;
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;

    let started = Instant::now();
    let taken = gantry(&p, &["backup", "now", "db"])?;
    let gantry_backup = started.elapsed();
    let id = taken["backups"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let gantry_size = taken["backups"][0]["size"].as_u64().unwrap_or(0);

    let archive = scratch.path().join("plain.tar.zst");
    let started = Instant::now();
    shell(&format!(
        "tar -C {} -cf - . | zstd -3 -q -o {}",
        volume.display(),
        archive.display()
    ))?;
    let plain_backup = started.elapsed();
    let plain_size = std::fs::metadata(&archive)
        .map_err(|e| e.to_string())?
        .len();

    std::fs::remove_dir_all(&data).map_err(|e| e.to_string())?;
    let started = Instant::now();
    gantry(&p, &["backup", "restore", "db", &id, "--yes"])?;
    let gantry_restore = started.elapsed();
    let restored = size_of(&data);

    let target = scratch.path().join("plain");
    std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
    let started = Instant::now();
    shell(&format!(
        "zstd -dc {} | tar -C {} -xf -",
        archive.display(),
        target.display()
    ))?;
    let plain_restore = started.elapsed();

    let total = (mib * 1024 * 1024) as u64;
    if restored != total {
        return Err(format!("restored {restored} bytes of {total}"));
    }
    Ok(table(
        mib,
        [
            ("`gantry backup now`", gantry_backup, Some(gantry_size)),
            ("`tar -cf - . \\| zstd -3`", plain_backup, Some(plain_size)),
            (
                "`gantry backup restore` (stop, unpack, start)",
                gantry_restore,
                None,
            ),
            (
                "`zstd -dc \\| tar -xf -` (into an empty directory)",
                plain_restore,
                None,
            ),
        ],
        total,
    ))
}

fn table(mib: usize, rows: [(&str, Duration, Option<u64>); 4], total: u64) -> String {
    let mut out = format!(
        "{mib} MiB in {} files of {FILE_MIB} MiB, half random, half text\n\n",
        mib / FILE_MIB
    );
    out.push_str("| | time | MiB/s | size | ratio |\n| --- | --- | --- | --- | --- |\n");
    for (what, took, size) in rows {
        let rate = total as f64 / (1024.0 * 1024.0) / took.as_secs_f64().max(1e-9);
        let (size, ratio) = match size {
            Some(s) => (
                format!("{:.1} MiB", s as f64 / 1048576.0),
                format!("{:.2}", s as f64 / total as f64),
            ),
            None => ("".to_owned(), "".to_owned()),
        };
        out.push_str(&format!(
            "| {what} | {} | {rate:.0} | {size} | {ratio} |\n",
            ms(took)
        ));
    }
    out
}

/// `mib` MiB in files of [`FILE_MIB`]: even ones random, odd ones text.
fn fill(dir: &Path, mib: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut random = std::fs::File::open("/dev/urandom")?;
    let mut block = vec![0u8; FILE_MIB << 20];
    for n in 0..mib / FILE_MIB {
        if n % 2 == 0 {
            random.read_exact(&mut block)?;
        } else {
            let mut text = Vec::with_capacity(block.len());
            let mut line = 0u64;
            while text.len() < block.len() {
                let _ = writeln!(
                    text,
                    "{n:06} {line:012} order shipped to customer {} with {} items",
                    line % 977,
                    line % 13
                );
                line += 1;
            }
            text.truncate(block.len());
            block.copy_from_slice(&text);
        }
        std::fs::write(dir.join(format!("f{n:04}")), &block)?;
    }
    Ok(())
}

fn size_of(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn gantry(p: &TestProject, args: &[&str]) -> Result<Value, String> {
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let run = p.gantry(&args);
    serde_json::from_str(&run.stdout)
        .map_err(|_| format!("gantry {args:?}: {}{}", run.stdout, run.stderr))
}

fn shell(command: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .args(["-c", command])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the bench's containers, network and volume.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = shell(&format!(
            "docker ps -aq --filter label=dev.gantry.project={PROJECT} | xargs -r docker rm -f; docker network rm gantry-{PROJECT}-local; docker volume rm -f gantry-{PROJECT}-local-data"
        ));
    }
}
