use super::*;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn touch(path: &Path) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(path, "").expect("touch");
}

const LIMITS: ResourceLimits = ResourceLimits {
    memory: Some(32 << 20),
    cpu: Some(0.5),
    pids: Some(64),
};

#[test]
fn modes_display_as_the_api_reports_them() {
    assert_eq!(CgroupMode::V2.to_string(), "cgroup v2");
    assert_eq!(CgroupMode::V1.to_string(), "cgroup v1");
    assert_eq!(CgroupMode::None.to_string(), "none");
}

#[test]
fn v2_create_enables_controllers_down_the_tree_and_writes_limits() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    std::fs::write(
        root.join("cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    )
    .expect("write");
    std::fs::write(root.join("cgroup.subtree_control"), "").expect("write");
    touch(&root.join("gantry/web-1/memory.swap.max"));
    let cgroups = Cgroups::with_root(CgroupMode::V2, root.to_owned());
    assert_eq!(cgroups.mode(), CgroupMode::V2);

    let cgroup = cgroups
        .create("web-1", &LIMITS)
        .expect("create")
        .expect("enforced");
    let dir = root.join("gantry/web-1");
    assert_eq!(
        cgroup,
        Cgroup {
            mode: CgroupMode::V2,
            dirs: vec![dir.clone()],
            memory_dir: Some(dir.clone())
        }
    );
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(
        read(&root.join("gantry/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(read(&dir.join("memory.max")), "33554432");
    assert_eq!(read(&dir.join("memory.swap.max")), "0");
    assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
    assert_eq!(read(&dir.join("pids.max")), "64");
    assert_eq!(cgroup.procs_files(), [dir.join("cgroup.procs")]);
}

#[test]
fn v2_create_leaves_enabled_controllers_and_unset_limits_alone() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").expect("write");
    std::fs::write(root.join("cgroup.subtree_control"), "cpu memory pids\n").expect("write");
    let cgroups = Cgroups::with_root(CgroupMode::V2, root.to_owned());
    let limits = ResourceLimits {
        memory: Some(1 << 30),
        ..ResourceLimits::default()
    };
    cgroups.create("web-1", &limits).expect("create");
    assert_eq!(
        read(&root.join("cgroup.subtree_control")),
        "cpu memory pids\n"
    );
    assert_eq!(read(&root.join("gantry/web-1/memory.max")), "1073741824");
    assert!(!root.join("gantry/web-1/cpu.max").exists());
    assert!(!root.join("gantry/web-1/pids.max").exists());
    assert!(
        !root.join("gantry/web-1/memory.swap.max").exists(),
        "only written where the kernel has it"
    );
}

#[test]
fn v2_create_refuses_a_limit_whose_controller_is_missing() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::write(root.path().join("cgroup.controllers"), "memory").expect("write");
    let cgroups = Cgroups::with_root(CgroupMode::V2, root.path().to_owned());
    let error = cgroups
        .create("web-1", &LIMITS)
        .expect_err("no cpu controller");
    assert_eq!(error.code(), "cgroup.unsupported");
    assert!(error.to_string().contains("cpu"), "{error}");
}

#[test]
fn v1_create_makes_a_directory_per_limited_controller() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    for hierarchy in ["memory", "cpu", "pids"] {
        std::fs::create_dir(root.join(hierarchy)).expect("mkdir");
    }
    touch(&root.join("memory/gantry/web-1/memory.memsw.limit_in_bytes"));
    let cgroups = Cgroups::with_root(CgroupMode::V1, root.to_owned());
    assert_eq!(cgroups.mode(), CgroupMode::V1);

    let cgroup = cgroups
        .create("web-1", &LIMITS)
        .expect("create")
        .expect("enforced");
    let (memory, cpu, pids) = (
        root.join("memory/gantry/web-1"),
        root.join("cpu/gantry/web-1"),
        root.join("pids/gantry/web-1"),
    );
    assert_eq!(cgroup.dirs, [memory.clone(), cpu.clone(), pids.clone()]);
    assert_eq!(cgroup.memory_dir.as_ref(), Some(&memory));
    assert_eq!(read(&memory.join("memory.limit_in_bytes")), "33554432");
    assert_eq!(
        read(&memory.join("memory.memsw.limit_in_bytes")),
        "33554432"
    );
    assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
    assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "50000");
    assert_eq!(read(&pids.join("pids.max")), "64");
}

#[test]
fn v1_create_without_limits_makes_only_the_memory_directory() {
    let root = tempfile::tempdir().expect("tempdir");
    for hierarchy in ["memory", "cpu", "pids"] {
        std::fs::create_dir(root.path().join(hierarchy)).expect("mkdir");
    }
    touch(&root.path().join("memory/gantry/web-1/memory.swappiness"));
    let cgroups = Cgroups::with_root(CgroupMode::V1, root.path().to_owned());
    let cgroup = cgroups
        .create("web-1", &ResourceLimits::default())
        .expect("create")
        .expect("enforced");
    assert_eq!(cgroup.dirs, [root.path().join("memory/gantry/web-1")]);
    assert!(!root.path().join("cpu/gantry").exists());
    assert_eq!(
        read(&root.path().join("memory/gantry/web-1/memory.swappiness")),
        ""
    );
}

#[test]
fn v1_create_without_a_pids_hierarchy_refuses_a_pids_limit_and_leaves_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("memory")).expect("mkdir");
    let cgroups = Cgroups::with_root(CgroupMode::V1, root.path().to_owned());
    let limits = ResourceLimits {
        pids: Some(10),
        ..ResourceLimits::default()
    };
    let error = cgroups
        .create("web-1", &limits)
        .expect_err("no pids hierarchy");
    assert!(matches!(
        error,
        CgroupError::Unsupported { controller: "pids" }
    ));
    assert!(!root.path().join("memory/gantry/web-1").exists());
}

#[test]
fn no_cgroups_means_no_cgroup_and_bad_names_are_refused() {
    let none = Cgroups::with_root(CgroupMode::None, PathBuf::from("/nonexistent"));
    assert_eq!(none.create("web-1", &LIMITS).expect("no error"), None);
    assert_eq!(none.open("web-1"), None);
    let root = tempfile::tempdir().expect("tempdir");
    let v2 = Cgroups::with_root(CgroupMode::V2, root.path().to_owned());
    for bad in ["", "..", "a/b", ".x"] {
        assert_eq!(
            v2.create(bad, &LIMITS).expect_err(bad).code(),
            "cgroup.invalid_name"
        );
    }
}

#[test]
fn oom_kills_memory_and_pids_are_read_from_the_cgroup_files() {
    let root = tempfile::tempdir().expect("tempdir");
    let v2 = root.path().join("v2");
    std::fs::create_dir(&v2).expect("mkdir");
    std::fs::write(
        v2.join("memory.events"),
        "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n",
    )
    .expect("write");
    std::fs::write(v2.join("memory.current"), "4096\n").expect("write");
    std::fs::write(v2.join("cgroup.procs"), "12\n7\n").expect("write");
    let cgroup = Cgroup {
        mode: CgroupMode::V2,
        dirs: vec![v2.clone()],
        memory_dir: Some(v2),
    };
    assert_eq!(
        (cgroup.oom_kills(), cgroup.memory_current(), cgroup.pids()),
        (2, Some(4096), vec![7, 12])
    );

    let v1 = root.path().join("v1");
    std::fs::create_dir(&v1).expect("mkdir");
    std::fs::write(
        v1.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
    )
    .expect("write");
    std::fs::write(v1.join("memory.usage_in_bytes"), "8192\n").expect("write");
    std::fs::write(v1.join("memory.failcnt"), "5\n").expect("write");
    let cgroup = Cgroup {
        mode: CgroupMode::V1,
        dirs: vec![v1.clone()],
        memory_dir: Some(v1.clone()),
    };
    assert_eq!(
        (
            cgroup.oom_kills(),
            cgroup.memory_current(),
            cgroup.memory_failcnt()
        ),
        (3, Some(8192), 5)
    );
    std::fs::write(
        v1.join("memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\n",
    )
    .expect("write");
    assert_eq!(
        cgroup.oom_kill_counter(),
        None,
        "an old kernel without the counter"
    );
}

#[test]
fn the_layout_is_found_from_the_mounts_and_proc_self_cgroup() {
    let root = tempfile::tempdir().expect("tempdir");
    let root = root.path();
    for dir in ["memory", "memory/process_api/abc", "cpu,cpuacct", "pids"] {
        touch(&root.join(dir).join("cgroup.procs"));
    }
    let proc_self =
        "9:name=systemd:/\n8:pids:/\n4:memory:/process_api/abc\n1:cpu,cpuacct:/\n0::/\n";
    assert_eq!(
        layout(root, proc_self),
        Layout::V1 {
            memory: root.join("memory/process_api/abc"),
            cpu: Some(root.join("cpu,cpuacct")),
            pids: Some(root.join("pids")),
        }
    );
    // A container that mounts its own cgroup at the root of the hierarchy.
    let moved = "4:memory:/docker/elsewhere\n";
    assert!(
        matches!(layout(root, moved), Layout::V1 { memory, cpu: Some(_), .. } if memory == root.join("memory"))
    );

    let unified = tempfile::tempdir().expect("tempdir");
    touch(&unified.path().join("cgroup.controllers"));
    std::fs::create_dir_all(unified.path().join("system.slice/gantry.service")).expect("mkdir");
    assert_eq!(
        layout(unified.path(), "0::/system.slice/gantry.service\n"),
        Layout::V2 {
            own: unified.path().join("system.slice/gantry.service")
        }
    );
    assert_eq!(layout(Path::new("/nonexistent"), proc_self), Layout::None);
}
