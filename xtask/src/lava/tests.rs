use std::process::Command;

use super::*;

fn stack(name: &str) -> Stack {
    crate::stack::load(&crate::project_root(), name).unwrap()
}

/// LAVA's Python packages for the schema tests (installed as root, else
/// the test fails with the apt-get line to run).
fn lava_schema() {
    let logs = tempfile::tempdir().unwrap();
    ensure_packages(SCHEMA_PACKAGES, logs.path()).unwrap();
}

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/lava/testdata")
        .join(name)
}

fn exp(entry_el: u8, smp: u32) -> Expectations {
    Expectations {
        entry_el,
        kernel_release: "6.12.117".into(),
        smp,
    }
}

fn case(name: &'static str, facts: &'static [Expected]) -> Case {
    Case {
        name,
        agent_scenario: name,
        facts,
    }
}

/// The cases of the recorded qemu-virt runs in testdata/, judged on facts
/// that depend only on the expectations given here (the hyp's version and
/// ABI facts only where the recording has no hyp, so a version bump cannot
/// turn the recorded pass into a failure).
fn recorded_hyp_job(entry_el: u8, hyp_facts: bool) -> JobPlan {
    let hyp = |facts: &'static [Expected]| if hyp_facts { facts } else { &[] };
    JobPlan {
        stem: "qemu-virt".into(),
        smp: 2,
        expectations: exp(entry_el, 2),
        cases: vec![
            case("boot", &[]),
            case("kernel-version", &[Expected::KernelRelease]),
            case("entry-el", &[Expected::EntryEl]),
            case("cpus", &[Expected::CpusOnline]),
            case("hyp-info", hyp(&[Expected::HypVersion, Expected::HypAbi])),
            case("devmem-user", &[Expected::ChildSignal]),
            case("uaccess-efault", &[Expected::WriteErrno]),
            case("bad-hypercall", &[]),
            case("vmm-no-device", &[Expected::VmmExit]),
        ],
    }
}

#[test]
fn the_hyp_stack_runs_every_agent_scenario_and_lists_the_rest() {
    let s = stack("qemu-virt");
    let p = plan(&s, "6.12.117", &e2e::scenarios());
    let main = &p.jobs[0];
    assert_eq!(main.stem, "qemu-virt");
    assert_eq!(main.smp, 2);
    let names: Vec<&str> = main.cases.iter().map(|c| c.name).collect();
    for want in [
        "boot",
        "entry-el",
        "hyp-info",
        "devmem-user",
        "bad-hypercall",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    assert_eq!(main.expectations.entry_el, 1);
    let smp4 = p.jobs.iter().find(|j| j.smp == 4).unwrap();
    assert_eq!(smp4.stem, "qemu-virt-smp4");
    assert_eq!(
        smp4.cases.iter().map(|c| c.name).collect::<Vec<_>>(),
        ["cpus-smp4"]
    );
    assert_eq!(smp4.cases[0].agent_scenario, "cpus");
    let not_run: BTreeMap<&str, &str> = p.not_run.iter().map(|(n, w)| (*n, w.as_str())).collect();
    assert!(not_run["demo-shell"].contains("exit status"), "{not_run:?}");
    assert!(
        not_run["damaged-magic"].contains("broken image"),
        "{not_run:?}"
    );
    // Every scenario is in exactly one place.
    let planned: usize = p.jobs.iter().map(|j| j.cases.len()).sum();
    assert_eq!(planned + p.not_run.len(), e2e::scenarios().len());
}

#[test]
fn the_direct_stack_skips_hyp_scenarios_like_the_test_runner() {
    let p = plan(&stack("qemu-virt-direct"), "6.12.117", &e2e::scenarios());
    let names: Vec<&str> = p
        .jobs
        .iter()
        .flat_map(|j| j.cases.iter().map(|c| c.name))
        .collect();
    assert!(
        names.contains(&"entry-el") && !names.contains(&"hyp-info"),
        "{names:?}"
    );
    let why = p.not_run.iter().find(|(n, _)| *n == "hyp-info").unwrap();
    assert_eq!(
        why.1,
        "needs the hypervisor (hyp.enabled = false on this stack)"
    );
    assert_eq!(p.jobs[0].expectations.entry_el, 2);
}

#[test]
fn case_command_passes_the_protocols_exact_lines() {
    let cmd = case_command(&case("entry-el", &[Expected::EntryEl]), &exp(1, 2));
    assert_eq!(
        cmd,
        r#"cloister_case entry-el entry-el '{"event":"hello","protocol":1,"agent_version":"' '","scenario":"entry-el"}' '{"event":"done","ok":true}' '{"event":"fact","key":"entry_el","value":"1"}'"#
    );
}

/// Runs one case command in `sh` against a fake agent printing `report`
/// and exiting with `rc`; returns the shell's stdout and what the fake
/// lava-test-case recorded.
fn run_case(style: TestStyle, command: &str, report: &str, rc: i32) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let agent = bin.join("fake-agent");
    std::fs::write(dir.path().join("report"), report).unwrap();
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\necho \"$1\" > {0}/asked\ncat {0}/report\nexit {rc}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::write(
        bin.join("lava-test-case"),
        format!("#!/bin/sh\necho \"$*\" >> {}/cases\n", dir.path().display()),
    )
    .unwrap();
    for f in [&agent, &bin.join("lava-test-case")] {
        Command::new("chmod").arg("+x").arg(f).status().unwrap();
    }
    // LAVA's run.sh runs its steps under `set -e`: a failing case must not
    // stop the script.
    let script = format!(
        "set -e\n{}\n{command}\necho script-end\n",
        case_function(style)
    );
    let want = dir.path().join("want");
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("CLOISTER_AGENT", &agent)
        .env("CLOISTER_WANT", &want)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with("script-end\n"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !want.exists(),
        "a case must use up the lines cloister_want stored for it"
    );
    let asked = std::fs::read_to_string(dir.path().join("asked")).unwrap_or_default();
    assert_eq!(
        asked.trim(),
        "entry-el",
        "the agent was asked for the wrong scenario"
    );
    let cases = std::fs::read_to_string(dir.path().join("cases")).unwrap_or_default();
    (stdout, cases)
}

fn lines(reports: &[Report]) -> String {
    reports.iter().map(|r| r.to_line() + "\n").collect()
}

#[test]
fn the_device_side_check_applies_the_runners_rules() {
    let c = case("entry-el", &[Expected::EntryEl]);
    let cmd = case_command(&c, &exp(1, 2));
    let hello = |scenario: &str| Report::Hello {
        protocol: PROTOCOL_VERSION,
        agent_version: "9.9.9".into(),
        scenario: scenario.into(),
    };
    let fact = |v: &str| Report::Fact {
        key: "entry_el".into(),
        value: v.into(),
    };
    let done = |ok| Report::Done { ok };
    let failed_check = Report::Check {
        name: "kmsg".into(),
        ok: false,
        detail: "no".into(),
    };
    let cases: Vec<(&str, String, i32, &str)> = vec![
        (
            "pass",
            lines(&[hello("entry-el"), fact("1"), done(true)]),
            0,
            "pass",
        ),
        (
            "wrong fact",
            lines(&[hello("entry-el"), fact("2"), done(true)]),
            0,
            "fail",
        ),
        (
            "missing fact",
            lines(&[hello("entry-el"), done(true)]),
            0,
            "fail",
        ),
        (
            "failed check",
            lines(&[hello("entry-el"), fact("1"), failed_check, done(false)]),
            1,
            "fail",
        ),
        ("cut off", lines(&[hello("entry-el"), fact("1")]), 0, "fail"),
        (
            "other scenario",
            lines(&[hello("entry"), fact("1"), done(true)]),
            0,
            "fail",
        ),
        (
            "old protocol",
            lines(&[hello("entry-el"), fact("1"), done(true)])
                .replace("\"protocol\":1", "\"protocol\":0"),
            0,
            "fail",
        ),
        ("nothing", String::new(), 127, "fail"),
    ];
    for (what, report, rc, want) in cases {
        let (stdout, recorded) = run_case(TestStyle::Shell, &cmd, &report, rc);
        assert_eq!(recorded, format!("entry-el --result {want}\n"), "{what}");
        // The report reaches the console, marked for the cross-check.
        for line in report.lines() {
            assert!(
                stdout.contains(&format!("{REPORT_MARK} entry-el {line}\n")),
                "{what}: {stdout}"
            );
        }
        let (stdout, recorded) = run_case(TestStyle::Interactive, &cmd, &report, rc);
        assert!(recorded.is_empty(), "{what}");
        assert!(
            stdout.contains(&format!("{CASE_MARK} entry-el {want}\n")),
            "{what}: {stdout}"
        );
    }
}

/// A fake build of `stack`: a manifest whose outputs exist in `dir`.
fn fake_manifest(stack: &Stack, dir: &Path) -> Manifest {
    use crate::manifest::{GitInfo, Item, FORMAT};
    let file = |name: &str, file: &str| {
        let path = dir.join(file);
        std::fs::write(&path, format!("fake {file}")).unwrap();
        Item::file(name, &path, None).unwrap()
    };
    let mut outputs = vec![
        file("host-kernel", "host-Image"),
        file("host-initramfs", "host-initramfs.cpio"),
        file("host-vmlinux", "vmlinux"),
    ];
    if stack.file.hyp.enabled {
        outputs.push(file("cloister-img", "cloister.img"));
    }
    if stack.file.board.is_some() {
        outputs.push(file(crate::build::BOARD_DTB_OUTPUT, "board.dtb"));
    }
    let mut inputs = Vec::new();
    if stack.file.qemu.boot == crate::stack::BootMethod::Disk {
        outputs.push(file(
            crate::qemu::DISK_OUTPUT,
            &format!("cloister-{}.img", stack.name),
        ));
        inputs.push(file(crate::qemu::FIRMWARE_INPUT, "u-boot.bin"));
    }
    Manifest {
        format: FORMAT,
        stack: stack.name.clone(),
        git: GitInfo {
            revision: "0123abc".into(),
            dirty: false,
        },
        tools: Vec::new(),
        inputs,
        outputs,
        kernel_release: "6.12.117".into(),
    }
}

fn yaml_as_json(path: &Path) -> Value {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(HELPER)
        .arg("tojson")
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn generated_jobs_and_device_dictionaries_pass_lavas_schema() {
    lava_schema();
    for (name, style, images) in [
        ("qemu-virt", TestStyle::Interactive, &["kernel"][..]),
        (
            "qemu-virt-direct",
            TestStyle::Shell,
            &["kernel", "ramdisk"][..],
        ),
        ("qemu-uboot", TestStyle::Interactive, &["bios", "disk"][..]),
    ] {
        let s = stack(name);
        let build = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let manifest = fake_manifest(&s, build.path());
        let g = generate(&s, &manifest, out.path(), None).unwrap();
        validate_files(&g.files_to_validate()).unwrap();
        assert!(g.jobs.len() >= 2, "{name}: a job per CPU count");
        let url = |file: &str| format!("file://{}/{file}", out.path().display());
        for job in &g.jobs {
            assert_eq!(job.style, style, "{name}");
            let text = std::fs::read_to_string(&job.path).unwrap();
            assert!(
                text.starts_with("# LAVA job: Cloister e2e scenarios"),
                "{text}"
            );
            // What LAVA reads is what was meant.
            let read = yaml_as_json(&job.path);
            assert_eq!(read["device_type"], "qemu");
            assert_eq!(read["context"]["machine"], s.file.qemu.machine);
            assert_eq!(
                read["context"]["extra_options"][0],
                format!("-smp {}", job.plan.smp)
            );
            let deployed = &read["actions"][0]["deploy"]["images"];
            let labels: Vec<&str> = deployed
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(labels, images, "{name}");
            match name {
                "qemu-virt" => {
                    assert_eq!(deployed["kernel"]["url"], url("cloister.img"));
                    assert_eq!(
                        deployed["kernel"]["image_arg"],
                        "-kernel {kernel} -append \"console=ttyAMA0 earlycon cloister.demo=host\""
                    );
                }
                "qemu-virt-direct" => {
                    assert_eq!(deployed["kernel"]["url"], url("host-Image"));
                    let ramdisk = &deployed["ramdisk"];
                    assert_eq!(ramdisk["url"], url("host-initramfs.cpio.gz"));
                    assert_eq!(ramdisk["compression"], "gz");
                    assert_eq!(ramdisk["format"], "cpio.newc");
                    assert_eq!(ramdisk["overlays"]["lava"], true);
                }
                _ => {
                    assert_eq!(deployed["bios"]["url"], url("u-boot.bin"));
                    assert_eq!(deployed["bios"]["image_arg"], "-bios {bios}");
                    assert_eq!(deployed["disk"]["url"], url("cloister-qemu-uboot.img"));
                    assert_eq!(
                        deployed["disk"]["image_arg"],
                        "-drive if=none,file={disk},format=raw,id=disk \
                         -device virtio-blk-device,drive=disk"
                    );
                }
            }
            if style == TestStyle::Shell {
                let steps =
                    &read["actions"][2]["test"]["definitions"][0]["repository"]["run"]["steps"];
                assert_eq!(steps.as_array().unwrap().len(), job.plan.cases.len() + 1);
            } else {
                let script = &read["actions"][2]["test"]["interactive"][0]["script"];
                // One named step per case (long cases are preceded by unnamed
                // cloister_want lines).
                let named = script
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|s| s.get("name").is_some())
                    .count();
                assert_eq!(named, job.plan.cases.len());
                assert_eq!(script[1]["name"], job.plan.cases[0].name);
            }
            assert_eq!(read["actions"][1]["boot"]["prompts"][0], PROMPT);
            let device = yaml_as_json(job.device.as_ref().unwrap());
            assert_eq!(device["constants"]["boot_retry"], 1);
            let extra = &device["actions"]["boot"]["methods"]["qemu"]["parameters"]["extra"];
            assert_eq!(extra[0], format!("-smp {}", job.plan.smp));
        }
    }
}

#[test]
fn the_board_plan_expects_the_boards_cpus_and_leaves_qemu_smp_scenarios_out() {
    let s = stack("rock5b");
    let p = plan(&s, "6.12.117", &e2e::scenarios());
    assert_eq!(p.jobs.len(), 1, "one job: a board has one CPU count");
    let job = &p.jobs[0];
    assert_eq!((job.stem.as_str(), job.smp), ("rock5b", 8));
    assert_eq!(job.expectations.smp, 8);
    assert_eq!(job.expectations.entry_el, 1);
    assert!(job.cases.iter().any(|c| c.name == "cpus"));
    let why = p.not_run.iter().find(|(n, _)| *n == "cpus-smp4").unwrap();
    assert_eq!(
        why.1,
        "boots QEMU with -smp 4; a board has the CPUs it has (`board.cpus`)"
    );
}

#[test]
fn the_board_job_boots_cloister_img_through_u_boot_and_passes_lavas_schema() {
    lava_schema();
    let s = stack("rock5b");
    let build = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let g = generate(&s, &fake_manifest(&s, build.path()), out.path(), None).unwrap();
    validate_files(&g.files_to_validate()).unwrap();
    assert_eq!(g.jobs.len(), 1);
    let job = &g.jobs[0];
    assert_eq!(job.device, None, "the lab owns the device dictionary");
    assert_eq!(job.style, TestStyle::Interactive);
    let read = yaml_as_json(&job.path);
    assert_eq!(read["device_type"], "rk3588-rock-5b");
    assert!(read.get("context").is_none(), "{read}");
    let url = |file: &str| format!("file://{}/{file}", out.path().display());
    let deploy = &read["actions"][0]["deploy"];
    assert_eq!(deploy["to"], "tftp");
    assert_eq!(deploy["kernel"]["url"], url("cloister.img"));
    assert_eq!(deploy["kernel"]["type"], "image");
    assert_eq!(deploy["dtb"]["url"], url("board.dtb"));
    assert_eq!(
        deploy["dtb"]["sha256sum"],
        crate::cache::sha256_file(&build.path().join("board.dtb")).unwrap()
    );
    let boot = &read["actions"][1]["boot"];
    assert_eq!(boot["method"], "u-boot");
    assert_eq!(boot["prompts"][0], PROMPT);
    let commands: Vec<&str> = boot["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        commands,
        [
            "setenv autoload no",
            "dhcp",
            "setenv serverip {SERVER_IP}",
            "tftp {KERNEL_ADDR} {KERNEL}",
            "tftp {DTB_ADDR} {DTB}",
            "setenv bootargs 'earlycon cloister.demo=host'",
            "{BOOTX}",
        ]
    );
    let script = &read["actions"][2]["test"]["interactive"][0]["script"];
    let named = script
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("name").is_some())
        .count();
    assert_eq!(named, job.plan.cases.len());
    // The cpus case expects the board's eight CPUs online.
    let cpus = script
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "cpus")
        .unwrap();
    assert!(
        cpus["command"]
            .as_str()
            .unwrap()
            .contains(r#"{"event":"fact","key":"cpus_online","value":"0-7"}"#),
        "{}",
        cpus["command"]
    );
    assert!(
        read["job_name"]
            .as_str()
            .unwrap()
            .ends_with(" cases, 8 CPUs)"),
        "{}",
        read["job_name"]
    );
    let err = run_job(job, 1, &out.path().join("run"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("job rock5b targets a lab device; submit it to a LAVA server instead"),
        "{err}"
    );
}

#[test]
fn a_board_command_line_u_boot_cannot_quote_is_refused() {
    let mut s = stack("rock5b");
    s.file.kernel.cmdline = "earlycon foo='bar'".into();
    let build = tempfile::tempdir().unwrap();
    let err = profile_for(&s, &fake_manifest(&s, build.path()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key `kernel.cmdline` contains a single quote or a newline"),
        "{err}"
    );
    let s = stack("rock5b");
    let mut manifest = fake_manifest(&s, build.path());
    manifest
        .outputs
        .retain(|o| o.name != crate::build::BOARD_DTB_OUTPUT);
    let err = profile_for(&s, &manifest).unwrap_err().to_string();
    assert!(
        err.contains("stack rock5b is a board (Radxa ROCK 5B) but its manifest lists no board DTB"),
        "{err}"
    );
}

#[test]
fn artifact_urls_can_point_at_a_server() {
    let s = stack("qemu-virt");
    let build = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let g = generate(
        &s,
        &fake_manifest(&s, build.path()),
        out.path(),
        Some("https://lava.example/cloister/"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&g.jobs[0].path).unwrap();
    assert!(
        text.contains("url: \"https://lava.example/cloister/cloister.img\""),
        "{text}"
    );
    assert_eq!(
        std::fs::read(out.path().join("cloister.img")).unwrap(),
        b"fake cloister.img"
    );
}

#[test]
fn a_job_lava_rejects_is_an_error_naming_the_field() {
    lava_schema();
    let s = stack("qemu-virt-direct");
    let build = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let g = generate(&s, &fake_manifest(&s, build.path()), out.path(), None).unwrap();
    let good = yaml_as_json(&g.jobs[0].path);
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut job = good.clone();
        edit(&mut job);
        let path = out.path().join("broken.yaml");
        std::fs::write(&path, yaml::to_yaml(&job, "")).unwrap();
        let err = validate_files(&[(FileKind::Job, path.clone())])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("LAVA rejects {}: ", path.display())),
            "{err}"
        );
        err
    };
    let err = broken(&|j| j["actions"][1]["boot"]["timeout"] = json!({"minutes": 0}));
    assert!(
        err.contains("field `actions[1].boot.timeout.minutes`"),
        "{err}"
    );
    let err = broken(&|j| {
        j.as_object_mut().unwrap().remove("visibility");
    });
    assert!(
        err.contains("field `visibility`: required key not provided"),
        "{err}"
    );
    let err = broken(&|j| j["actions"][1]["boot"]["method"] = json!("qemu-typo"));
    assert!(
        err.contains("field `actions[1].boot.method`: unknown boot method 'qemu-typo'"),
        "{err}"
    );
    let err = broken(&|j| j["context"]["smp"] = json!(4));
    assert!(err.contains("field `context.smp`"), "{err}");
    let err = broken(&|j| {
        j["actions"][2]["test"]["definitions"][0]["name"] = json!("has space");
    });
    assert!(
        err.contains("field `actions[2].test.definitions[0]"),
        "{err}"
    );
    // A device dictionary without its constants.
    let device = g.jobs[0].device.clone().unwrap();
    let mut dict = yaml_as_json(&device);
    dict.as_object_mut().unwrap().remove("constants");
    std::fs::write(&device, yaml::to_yaml(&dict, "")).unwrap();
    let err = validate_files(&[(FileKind::Device, device)])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `constants`: required key not provided"),
        "{err}"
    );
}

fn qemu_profile() -> QemuProfile {
    QemuProfile {
        machine: "virt".into(),
        cpu: "max".into(),
        memory_mib: 1024,
        extra_args: Vec::new(),
        boot: QemuBoot::Kernel {
            kernel: "/k".into(),
            ramdisk: None,
            cmdline: "console=ttyAMA0".into(),
        },
    }
}

#[test]
fn a_case_too_long_to_type_is_typed_in_lines_busybox_keeps() {
    static MANY: [Expected; 40] = [Expected::KernelRelease; 40];
    let job = JobPlan {
        stem: "x".into(),
        smp: 2,
        expectations: exp(1, 2),
        cases: vec![case("kernel-version", &MANY)],
    };
    assert!(case_command(&job.cases[0], &job.expectations).len() > MAX_TYPED_LINE);
    let def = job_definition("x", "g", &qemu_profile(), &BTreeMap::new(), &job, &[]).unwrap();
    let script = def["actions"][2]["test"]["interactive"][0]["script"]
        .as_array()
        .unwrap()
        .clone();
    let commands: Vec<&str> = script
        .iter()
        .map(|s| s["command"].as_str().unwrap())
        .collect();
    assert!(
        commands.iter().all(|c| c.len() <= MAX_TYPED_LINE),
        "{commands:?}"
    );
    let wants = &commands[1..commands.len() - 1];
    assert!(wants.len() >= 2, "{commands:?}");
    assert!(wants.iter().all(|c| c.starts_with("cloister_want '")));
    let fact = r#"'{"event":"fact","key":"kernel_release","value":"6.12.117"}'"#;
    let carried: usize = wants.iter().map(|c| c.matches(fact).count()).sum();
    assert_eq!(carried, 40);
    // Only the last line is the named case, and it carries no fact.
    assert!(script[..script.len() - 1]
        .iter()
        .all(|s| s.get("name").is_none()));
    let last = script.last().unwrap();
    assert_eq!(last["name"], "kernel-version");
    assert!(
        !commands.last().unwrap().contains(fact),
        "{}",
        commands.last().unwrap()
    );
}

#[test]
fn facts_typed_ahead_with_cloister_want_are_checked_like_arguments() {
    static MANY: [Expected; 6] = [Expected::EntryEl; 6];
    let c = case("entry-el", &MANY);
    let e = exp(1, 2);
    let typed_lines = case_commands(&c, &e, 200).unwrap();
    assert!(typed_lines.len() >= 3, "{typed_lines:?}");
    assert!(
        typed_lines.iter().all(|l| l.len() <= 200),
        "{typed_lines:?}"
    );
    let typed = typed_lines.join("\n");
    let report = |facts: &[Report]| {
        let mut all = vec![Report::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "1".into(),
            scenario: "entry-el".into(),
        }];
        all.extend(facts.iter().cloned());
        all.push(Report::Done { ok: true });
        lines(&all)
    };
    let fact = |v: &str| Report::Fact {
        key: "entry_el".into(),
        value: v.into(),
    };
    for (what, facts, want) in [
        ("the fact", vec![fact("1")], "pass"),
        ("a wrong fact", vec![fact("2")], "fail"),
        ("no fact", vec![], "fail"),
    ] {
        let (stdout, _) = run_case(TestStyle::Interactive, &typed, &report(&facts), 0);
        assert!(
            stdout.contains(&format!("{CASE_MARK} entry-el {want}\n")),
            "{what}: {stdout}"
        );
    }
    assert_eq!(case_commands(&c, &e, MAX_TYPED_LINE).unwrap().len(), 1);

    let err = case_commands(&c, &e, 40).unwrap_err().to_string();
    assert!(
        err.contains("case entry-el: the expected line")
            && err.contains("more than the 40 a typed line may have"),
        "{err}"
    );
}

#[test]
fn a_real_hyp_run_is_read_per_case_and_agrees_with_the_runner() {
    lava_schema();
    let results = read_results(&testdata("hyp-pass.log")).unwrap();
    assert_eq!(results.job().unwrap().result, "pass");
    let ours = results.ours();
    assert_eq!(ours.len(), 9);
    assert!(ours
        .iter()
        .all(|c| c.result == "pass" && c.definition == "0_cloister-e2e"));
    assert_eq!(
        results.reports["entry-el"],
        [
            r#"{"event":"hello","protocol":1,"agent_version":"0.1.0","scenario":"entry-el"}"#,
            r#"{"event":"fact","key":"entry_el","value":"1"}"#,
            r#"{"event":"done","ok":true}"#,
        ]
    );
    let verdicts = judge(&recorded_hyp_job(1, false), &results);
    assert_eq!(verdicts.len(), 9);
    for (name, v) in &verdicts {
        assert_eq!(*v, Verdict::Pass, "{name}");
    }
}

#[test]
fn cases_that_fail_on_the_device_fail_in_lava_and_for_the_runner() {
    lava_schema();
    // The qemu-virt job booted on the direct kernel (no hyp): LAVA still
    // calls the job complete, but the hyp cases fail.
    let results = read_results(&testdata("hyp-job-on-direct-kernel.log")).unwrap();
    assert_eq!(results.job().unwrap().result, "pass");
    let verdicts: BTreeMap<String, Verdict> = judge(&recorded_hyp_job(1, true), &results)
        .into_iter()
        .collect();
    assert_eq!(verdicts["boot"], Verdict::Pass);
    assert_eq!(
        verdicts["entry-el"],
        Verdict::Fail(
            "LAVA: fail; the agent's report: entry_el: expected \"1\", agent reported \"2\"".into()
        )
    );
    assert!(
        matches!(&verdicts["hyp-info"], Verdict::Fail(w) if w.contains("hyp_version: expected")
            && w.contains("agent reported \"unreadable")),
        "{:?}",
        verdicts["hyp-info"]
    );
    for name in ["devmem-user", "uaccess-efault", "bad-hypercall"] {
        assert!(
            matches!(&verdicts[name], Verdict::Fail(w) if w.starts_with("LAVA: fail; the agent's report: check")),
            "{name}: {:?}",
            verdicts[name]
        );
    }
}

/// The cases of `hyp-pass.log` / `hyp-job-on-direct-kernel.log` that
/// `cargo xtask test` also runs through LAVA.
fn test_run_job(entry_el: u8) -> JobPlan {
    let mut job = recorded_hyp_job(entry_el, false);
    job.cases.retain(|c| TEST_RUN_SCENARIOS.contains(&c.name));
    assert_eq!(job.cases.len(), TEST_RUN_SCENARIOS.len());
    job
}

#[test]
fn the_test_runs_lava_item_agrees_only_when_lava_and_the_run_agree() {
    lava_schema();
    let passed = read_results(&testdata("hyp-pass.log")).unwrap();
    let all_pass = |_: &str| Some(Verdict::Pass);
    let got = compare_with_test_run(&test_run_job(1), &passed, &all_pass);
    assert_eq!(
        got,
        [("boot".to_owned(), Ok(())), ("entry-el".to_owned(), Ok(()))]
    );

    // The test run failed entry-el where LAVA passed it.
    let entry_failed = |n: &str| {
        Some(if n == "entry-el" {
            Verdict::Fail("x".into())
        } else {
            Verdict::Pass
        })
    };
    let got = compare_with_test_run(&test_run_job(1), &passed, &entry_failed);
    assert_eq!(got[0], ("boot".to_owned(), Ok(())));
    assert_eq!(
        got[1],
        (
            "entry-el".to_owned(),
            Err("cargo xtask test: fail; LAVA: pass; the runner on LAVA's report: pass".into())
        )
    );

    // Failing together is agreement: the hyp job on the direct kernel fails
    // entry-el in LAVA, for the runner, and (here) in the test run.
    let direct = read_results(&testdata("hyp-job-on-direct-kernel.log")).unwrap();
    let got = compare_with_test_run(&test_run_job(1), &direct, &entry_failed);
    assert_eq!(
        got,
        [("boot".to_owned(), Ok(())), ("entry-el".to_owned(), Ok(()))]
    );
    let got = compare_with_test_run(&test_run_job(1), &direct, &all_pass);
    assert_eq!(
        got[1],
        (
            "entry-el".to_owned(),
            Err(
                "cargo xtask test: pass; LAVA: fail; the runner on LAVA's report: fail: \
                 entry_el: expected \"1\", agent reported \"2\""
                    .into()
            )
        )
    );

    // No verdict from the test run, or no result from LAVA: never agreement.
    let none = |_: &str| None;
    let got = compare_with_test_run(&test_run_job(1), &passed, &none);
    assert!(
        matches!(&got[0].1, Err(w) if w.starts_with("cargo xtask test has no verdict")),
        "{got:?}"
    );
    let got = compare_with_test_run(&test_run_job(1), &LavaResults::default(), &all_pass);
    assert_eq!(
        got[0].1,
        Err("LAVA recorded 0 results for it, expected one".into())
    );
}

#[test]
fn the_test_runs_lava_item_skips_when_its_scenarios_did_not_run() {
    let out = tempfile::tempdir().unwrap();
    let verdict = check_against_test_run(&stack("qemu-virt"), out.path(), &|n: &str| {
        (n == "boot").then(|| Verdict::Skip("filtered".into()))
    });
    assert_eq!(
        verdict,
        Verdict::Skip(
            "none of boot, entry-el ran on qemu-virt in this run: nothing to compare".into()
        )
    );
}

#[test]
fn a_real_lava_test_shell_run_is_read_per_case() {
    lava_schema();
    let results = read_results(&testdata("direct-shell-pass.log")).unwrap();
    let ours: Vec<(&str, &str)> = results
        .ours()
        .iter()
        .map(|c| (c.case.as_str(), c.result.as_str()))
        .collect();
    assert_eq!(
        ours,
        [
            ("boot", "pass"),
            ("kernel-version", "pass"),
            ("entry-el", "pass"),
            ("cpus", "pass"),
            ("vmm-no-device", "pass"),
        ]
    );
    let job = JobPlan {
        cases: vec![
            case("boot", &[]),
            case("kernel-version", &[Expected::KernelRelease]),
            case("entry-el", &[Expected::EntryEl]),
            case("cpus", &[Expected::CpusOnline]),
            case("vmm-no-device", &[Expected::VmmExit]),
        ],
        ..recorded_hyp_job(2, false)
    };
    assert!(judge(&job, &results)
        .iter()
        .all(|(_, v)| *v == Verdict::Pass));
}

#[test]
fn missing_extra_and_disagreeing_cases_fail() {
    let report = |scenario: &str, value: &str| {
        vec![
            Report::Hello {
                protocol: PROTOCOL_VERSION,
                agent_version: "t".into(),
                scenario: scenario.into(),
            }
            .to_line(),
            Report::Fact {
                key: "entry_el".into(),
                value: value.into(),
            }
            .to_line(),
            Report::Done { ok: true }.to_line(),
        ]
    };
    let result = |case: &str, result: &str| CaseResult {
        definition: "0_cloister-e2e".into(),
        case: case.into(),
        result: result.into(),
        detail: None,
    };
    let job = JobPlan {
        stem: "s".into(),
        smp: 2,
        expectations: exp(1, 2),
        cases: vec![case("entry-el", &[Expected::EntryEl]), case("boot", &[])],
    };
    let mut results = LavaResults {
        cases: vec![
            result("entry-el", "pass"),
            result("surprise", "pass"),
            CaseResult {
                definition: "lava".into(),
                case: "job".into(),
                result: "fail".into(),
                detail: Some("boot timed out".into()),
            },
        ],
        ..LavaResults::default()
    };
    results
        .reports
        .insert("entry-el".into(), report("entry-el", "2"));
    let v = judge(&job, &results);
    assert!(
        matches!(&v[0], (n, Verdict::Fail(w)) if n == "entry-el" && w.contains("disagree")),
        "{v:?}"
    );
    assert_eq!(
        v[1],
        (
            "boot".into(),
            Verdict::Fail("LAVA recorded no result (LAVA job fail: boot timed out)".into())
        )
    );
    assert!(
        matches!(&v[2], (n, Verdict::Fail(w)) if n == "surprise" && w.contains("no scenario of this job")),
        "{v:?}"
    );
}

#[test]
fn yaml_reads_back_as_the_same_value() {
    lava_schema();
    let v = json!({
        "a": "yes", "b": ["-smp 2", "x: y", "it's \"q\"\n2nd", 7, true, null],
        "c": {"d": [], "e": {}, "f": [{"g": 1, "h": [1, [2, 3]]}]},
        "prompt": "cloister-host:/#",
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.yaml");
    std::fs::write(&path, yaml::to_yaml(&v, "comment")).unwrap();
    assert_eq!(yaml_as_json(&path), v);
}

#[test]
fn regex_escape_quotes_metacharacters() {
    assert_eq!(regex_escape("cpus-smp4"), "cpus-smp4");
    assert_eq!(regex_escape("a.b(c)"), r"a\.b\(c\)");
}
