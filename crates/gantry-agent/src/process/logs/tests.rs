use std::io::Cursor;

use super::*;

fn lines_of(input: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    copy_lines(Cursor::new(input.to_vec()), |l| lines.push(l.to_owned()));
    lines
}

fn writer(dir: &Path, max_bytes: u64, keep: u32) -> LogWriter {
    LogWriter::open(dir, "web-1", max_bytes, keep).expect("open log")
}

fn texts(lines: Vec<(u64, Stream, String)>) -> Vec<String> {
    lines.into_iter().map(|(_, _, line)| line).collect()
}

#[test]
fn lines_are_split_on_newlines_and_a_last_unterminated_line_is_kept() {
    assert_eq!(
        lines_of(b"one\r\ntwo\n\nthree"),
        ["one", "two", "", "three"]
    );
    assert!(lines_of(b"").is_empty());
}

#[test]
fn invalid_utf8_is_replaced_not_dropped() {
    assert_eq!(lines_of(b"caf\xe9 ok\n"), ["caf\u{fffd} ok"]);
}

#[test]
fn very_long_lines_are_split_on_a_character_boundary() {
    let mut input = vec![b'a'; MAX_LINE - 1];
    input.extend_from_slice("é".as_bytes()); // straddles the limit
    input.extend_from_slice(b"tail\n");
    let lines = lines_of(&input);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].len(), MAX_LINE - 1);
    assert_eq!(lines[1], "étail");
    let huge = vec![b'x'; 3 * MAX_LINE + 5];
    let sizes: Vec<usize> = lines_of(&huge).iter().map(String::len).collect();
    assert_eq!(sizes, [MAX_LINE, MAX_LINE, MAX_LINE, 5]);
}

#[test]
fn records_read_back_with_their_stream_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = writer(dir.path(), 0, 3);
    log.write(10, Stream::Stdout, "out \"quoted\"");
    log.write(20, Stream::Stderr, "err");
    let lines = read_log(dir.path(), "web-1", None, None);
    assert_eq!(
        lines,
        [
            (10, Stream::Stdout, "out \"quoted\"".to_owned()),
            (20, Stream::Stderr, "err".to_owned())
        ]
    );
    let raw = std::fs::read_to_string(dir.path().join("web-1.log")).expect("read");
    assert!(
        raw.starts_with(r#"{"ts":10,"stream":"stdout","line":"out \"quoted\""}"#),
        "{raw}"
    );
}

#[test]
fn rotation_keeps_at_most_log_keep_files_and_loses_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = writer(dir.path(), 500, 50);
    let written: Vec<String> = (0..400).map(|i| format!("line {i}")).collect();
    for (i, line) in written.iter().enumerate() {
        log.write(i as u64, Stream::Stdout, line);
    }
    assert!(
        dir.path().join("web-1.log.1").exists(),
        "rotated at least once"
    );
    assert_eq!(texts(read_log(dir.path(), "web-1", None, None)), written);

    let small = tempfile::tempdir().expect("tempdir");
    let mut log = writer(small.path(), 500, 3);
    for (i, line) in written.iter().enumerate() {
        log.write(i as u64, Stream::Stdout, line);
    }
    let files = std::fs::read_dir(small.path()).expect("dir").count();
    assert_eq!(files, 4, "the live file and 3 rotated ones");
    let kept = texts(read_log(small.path(), "web-1", None, None));
    assert!(
        written.ends_with(&kept),
        "the newest lines, in order, with no gap"
    );
}

#[test]
fn with_log_keep_zero_rotation_starts_the_file_afresh() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = writer(dir.path(), 100, 0);
    for i in 0..50 {
        log.write(i, Stream::Stdout, "0123456789");
    }
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    assert!(
        std::fs::metadata(dir.path().join("web-1.log"))
            .expect("log")
            .len()
            < 100
    );
}

#[test]
fn read_log_filters_by_time_and_keeps_the_tail_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = writer(dir.path(), 300, 10);
    for i in 0..100 {
        log.write(i, Stream::Stdout, &format!("{i}"));
    }
    let since: Vec<u64> = read_log(dir.path(), "web-1", Some(95), None)
        .iter()
        .map(|l| l.0)
        .collect();
    assert_eq!(since, [95, 96, 97, 98, 99]);
    let tail: Vec<u64> = read_log(dir.path(), "web-1", None, Some(30))
        .iter()
        .map(|l| l.0)
        .collect();
    assert_eq!(tail, (70..100).collect::<Vec<u64>>());
    let both: Vec<u64> = read_log(dir.path(), "web-1", Some(50), Some(1000))
        .iter()
        .map(|l| l.0)
        .collect();
    assert_eq!(both, (50..100).collect::<Vec<u64>>());
    assert!(read_log(dir.path(), "other", None, None).is_empty());
}

#[test]
fn a_torn_last_line_is_skipped_by_read_log_and_read_whole_by_a_cursor_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = writer(dir.path(), 0, 1);
    log.write(1, Stream::Stdout, "whole");
    let path = dir.path().join("web-1.log");
    let mut file = File::options().append(true).open(&path).expect("open");
    file.write_all(br#"{"ts":2,"stream":"stdout","li"#)
        .expect("write");
    assert_eq!(texts(read_log(dir.path(), "web-1", None, None)), ["whole"]);
    let mut cursor = LogCursor::at_start(dir.path(), "web-1");
    assert_eq!(texts(cursor.poll()), ["whole"]);
    file.write_all(b"ne\":\"rest\"}\n").expect("write");
    assert_eq!(texts(cursor.poll()), ["rest"]);
}

#[test]
fn a_cursor_follows_new_lines_across_rotations_without_loss_or_repeats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = writer(dir.path(), 400, 10);
    log.write(0, Stream::Stdout, "before the cursor");
    let mut cursor = LogCursor::at_end(dir.path(), "web-1");
    let mut seen = Vec::new();
    let mut written = Vec::new();
    for round in 0..40 {
        // 1 to 40 lines between polls: none, one or several rotations.
        for i in 0..=round {
            let line = format!("round {round} line {i}");
            log.write(
                1,
                if i % 2 == 0 {
                    Stream::Stdout
                } else {
                    Stream::Stderr
                },
                &line,
            );
            written.push(line);
        }
        seen.extend(texts(cursor.poll()));
    }
    assert_eq!(seen, written);
    assert!(cursor.poll().is_empty());
}

#[test]
fn a_cursor_on_a_log_not_yet_written_picks_it_up_from_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cursor = LogCursor::at_end(dir.path(), "web-1");
    assert!(cursor.poll().is_empty());
    let mut log = writer(dir.path(), 0, 1);
    log.write(5, Stream::Stderr, "first");
    assert_eq!(cursor.poll(), [(5, Stream::Stderr, "first".to_owned())]);
}

#[test]
fn logs_of_gone_instances_are_pruned_to_the_newest_few_and_live_or_fresh_ones_kept() {
    let logs = tempfile::tempdir().expect("tempdir");
    let run = tempfile::tempdir().expect("tempdir");
    let hours_ago =
        |h: u64| std::time::SystemTime::now() - std::time::Duration::from_secs(h * 3600);
    let write = |name: &str, at: std::time::SystemTime| {
        let path = logs.path().join(name);
        std::fs::write(&path, "{}\n").expect("write");
        let file = File::options().append(true).open(&path).expect("open");
        file.set_modified(at).expect("set mtime");
    };
    // Gone instances, web-1 the oldest; each with a rotation.
    for i in 1..=14u64 {
        write(&format!("web-{i}.log"), hours_ago(100 - i));
        write(&format!("web-{i}.log.1"), hours_ago(101 - i));
    }
    // Running (its relay's pid file is there), though quiet for long.
    write("quiet-1.log", hours_ago(1000));
    std::fs::write(
        run.path().join("quiet-1.pid"),
        r#"{"pid":1,"start_time":1,"relay_pid":1}"#,
    )
    .expect("pid file");
    // Starting: no pid file yet, but just written.
    write("new-1.log", std::time::SystemTime::now());
    // Not a log of Gantry's.
    write("notes.txt", hours_ago(1000));

    prune_gone(logs.path(), run.path(), 10);

    let mut left: Vec<String> = std::fs::read_dir(logs.path())
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = (5..=14u64)
        .flat_map(|i| [format!("web-{i}.log"), format!("web-{i}.log.1")])
        .chain(["quiet-1.log", "new-1.log", "notes.txt"].map(str::to_owned))
        .collect();
    expected.sort();
    assert_eq!(left, expected);
}
