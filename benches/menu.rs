//! What rendering costs per boot: a client's iPXE script (no menu; the menu with two
//! installers) and an installer's answer file (the built-in preseed, through minijinja with a
//! fresh environment as `GET /answer/...` does). Both happen once per boot of one client, so
//! the question is only whether they are small next to the rest of a boot (seconds).

use criterion::{Criterion, criterion_group, criterion_main};
use isboot::boot::answer::{self, AnswerContext};
use isboot::boot::script::{BootChoice, ClientScript, ScriptInstaller, render};
use std::collections::BTreeMap;
use std::hint::black_box;

fn installers() -> Vec<ScriptInstaller> {
    ["debian12", "rocky9"]
        .iter()
        .map(|n| ScriptInstaller {
            name: n.to_string(),
            label: format!("Install {n}"),
            kernel_url: format!("http://10.0.0.1:9261/install/{n}/kernel"),
            initrd_url: format!("http://10.0.0.1:9261/install/{n}/initrd"),
            args: format!(
                "console=ttyS0,115200 auto=true priority=critical interface=auto url=http://10.0.0.1:9261/answer/52-54-00-00-00-01/{n}/preseed.cfg"
            ),
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let inst = installers();
    let script = |menu_timeout, installers| ClientScript {
        root_path: "iscsi:10.0.0.1::::iqn.2026-11.org.isboot:pc1",
        files_url: "http://10.0.0.1:9261/files",
        default: BootChoice::Disk,
        menu_timeout,
        installers,
        images: &[],
    };
    let mut g = c.benchmark_group("menu");
    let plain = script(0, &[]);
    g.bench_function("script-disk-no-menu", |b| {
        b.iter(|| render(black_box(&plain)))
    });
    let menu = script(5, &inst);
    g.bench_function("script-menu-2-installers", |b| {
        b.iter(|| render(black_box(&menu)))
    });
    let mut vars = BTreeMap::new();
    vars.insert(
        "early_command".to_string(),
        "echo MARK > /dev/ttyS0".to_string(),
    );
    let ctx = AnswerContext::example(&vars);
    g.bench_function("answer-preseed", |b| {
        b.iter(|| answer::render("preseed.cfg", answer::PRESEED, black_box(&ctx)).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
