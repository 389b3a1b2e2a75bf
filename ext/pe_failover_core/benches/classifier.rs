//! Classifier benchmark: a synthetic group set of N groups (default 10,000)
//! built from the shapes of the real PE 2016 dump in `spec/fixtures/nc/` —
//! a tree several levels deep, rules with pins of the primary, class
//! parameters, `config_data` and variables naming the primary's host — timed
//! through each step of a replication: parse, transform, canonical digest,
//! diff and plan (every group mentions the host, so the plan updates every
//! group). Each step runs several times and the median is printed, with
//! `serde_json::from_str::<Value>` of the same text as an anchor for parse.
//!
//! It then compares the two ways of shipping one changed group: the planned
//! calls versus one import-hierarchy call carrying the whole set.
//!
//! Finally the shipping path of `ncship`: the active's work per poll
//! (parse the `GET /v1/groups` body, transform, encode the canonical dump),
//! the passive's work per received dump (decode and verify it, diff against
//! the live groups, plan), and the bytes of the dump file that travel.
//!
//! `cargo bench -p pe_failover_core --bench classifier` (env:
//! PEF_BENCH_GROUPS, PEF_BENCH_RUNS).

#[path = "util/allocator.rs"]
mod allocator;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use pe_failover_core::classifier::{
    self, canonical_digest, import_hierarchy, parse_dump, transform, Group, OperationKind,
};
use pe_failover_core::ncship::{decode_dump, encode_dump};
use serde_json::{json, Value};

const MASTER1: &str = "master1.puppet.vm";
const MASTER2: &str = "master2.puppet.vm";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn time<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect(),
    )
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fixture's 12 groups plus `n - 12` generated ones shaped like them.
fn generate(n: usize) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../spec/fixtures/nc/ncio-pe2016-groups-master1.min.json");
    let text = std::fs::read_to_string(&path).expect("fixture");
    let fixture: Vec<Value> = serde_json::from_str(&text).expect("fixture JSON");
    let templates: Vec<&Value> = fixture
        .iter()
        .filter(|g| g["id"] != classifier::ROOT_GROUP_ID)
        .collect();
    let infra = fixture
        .iter()
        .find(|g| g["name"] == "PE Infrastructure")
        .expect("PE Infrastructure");
    let infra_id = infra["id"].as_str().unwrap_or_default().to_owned();
    let pe_params = infra["classes"]["puppet_enterprise"].clone();
    let id_of = |i: usize| format!("{:08x}-0000-4000-8000-{:012x}", i + 1, i + 1);

    let mut groups = fixture.clone();
    for i in 0..n.saturating_sub(fixture.len()) {
        let t = templates[i % templates.len()];
        // a 4-ary tree under PE Infrastructure: depth ~log4(n)
        let parent = if i < 4 {
            infra_id.clone()
        } else {
            id_of(i / 4 - 1)
        };
        let mut g = t.clone();
        g["id"] = json!(id_of(i));
        g["parent"] = json!(parent);
        g["name"] = json!(format!("{} {i}", t["name"].as_str().unwrap_or("group")));
        g["rule"] = json!([
            "or",
            ["=", "name", MASTER1],
            ["=", "name", format!("node{i}.puppet.vm")],
            [
                "and",
                ["~", ["fact", "os", "family"], "RedHat"],
                [">=", ["fact", "memorysize_mb"], "2048"]
            ]
        ]);
        let mut classes = t["classes"].clone();
        if i % 3 == 0 {
            classes["puppet_enterprise"] = pe_params.clone();
        }
        classes["puppet_enterprise::profile::agent"] = json!({
            "server_list": format!("{MASTER1}:8140,compiler{i}.puppet.vm:8140"),
            "pcp_broker_list": [format!("{MASTER1}:8142")],
            "manage_symlinks": i % 2 == 0,
        });
        g["classes"] = classes;
        if i % 5 == 0 {
            g["config_data"] = json!({"puppet_enterprise::profile::console":
                {"proxy_url": format!("https://{MASTER1}:443/")}});
        }
        g["variables"] = json!({"primary": format!("pcp://{MASTER1}/server"), "idx": i});
        groups.push(g);
    }
    serde_json::to_string(&groups).expect("serialise")
}

fn kib(bytes: usize) -> String {
    format!("{:.1} KiB", bytes as f64 / 1024.0)
}

fn main() {
    let n = env_usize("PEF_BENCH_GROUPS", 10_000);
    let runs = env_usize("PEF_BENCH_RUNS", 7);
    let text = generate(n);
    let mappings = [(MASTER1, MASTER2)];

    let groups: Vec<Group> = parse_dump(&text).expect("parse");
    classifier::validate_hierarchy(&groups).expect("valid tree");
    let (desired, report) = transform(&groups, &mappings).expect("transform");
    let diff = classifier::diff(&desired, &groups).expect("diff");
    let plan = classifier::plan(&diff).expect("plan");

    let t_value = time(runs, || {
        black_box(serde_json::from_str::<Value>(black_box(&text)).unwrap());
    });
    let t_parse = time(runs, || {
        black_box(parse_dump(black_box(&text)).unwrap());
    });
    let t_transform = time(runs, || {
        black_box(transform(black_box(&groups), &mappings).unwrap());
    });
    let t_digest = time(runs, || {
        black_box(canonical_digest(black_box(&groups)));
    });
    let t_diff = time(runs, || {
        black_box(classifier::diff(black_box(&desired), black_box(&groups)).unwrap());
    });
    let t_plan = time(runs, || {
        black_box(classifier::plan(black_box(&diff)).unwrap());
    });

    // One changed group: a class parameter edited on the active primary.
    let mut one_changed = desired.clone();
    let target = one_changed
        .iter_mut()
        .find(|g| g.name == "PE Console")
        .expect("PE Console");
    target
        .classes
        .entry("pe_console_prune".into())
        .or_default()
        .insert("prune_upto".into(), json!("60"));
    let small_diff = classifier::diff(&one_changed, &desired).expect("diff");
    let small_plan = classifier::plan(&small_diff).expect("plan");
    let t_small = time(runs, || {
        let d = classifier::diff(black_box(&one_changed), black_box(&desired)).unwrap();
        black_box(classifier::plan(&d).unwrap());
    });
    let import = import_hierarchy(&one_changed).expect("import");
    let t_import = time(runs, || {
        black_box(import_hierarchy(black_box(&one_changed)).unwrap());
    });

    println!(
        "classifier: {n} groups ({} of JSON), median of {runs} runs (2 cores)",
        kib(text.len())
    );
    println!("| step | time | notes |");
    println!("|---|---:|---|");
    println!(
        "| parse (JSON text → groups, checked) | {t_parse:.2?} | anchor: `serde_json::from_str::<Value>` {t_value:.2?} ({:.2}x) |",
        t_parse.as_secs_f64() / t_value.as_secs_f64()
    );
    println!(
        "| transform {MASTER1} → {MASTER2} | {t_transform:.2?} | {} rewrites in {} groups |",
        report.rewrites.len(),
        report.changed_group_ids().len()
    );
    println!("| canonical digest (SHA-256) | {t_digest:.2?} | |");
    println!(
        "| diff (transformed vs live) | {t_diff:.2?} | {} changed, {} unchanged |",
        diff.changed().len(),
        diff.unchanged()
    );
    println!(
        "| plan | {t_plan:.2?} | {} updates, {} of bodies |",
        plan.count(OperationKind::Update),
        kib(plan.payload_bytes())
    );
    println!("| diff + plan, one changed group | {t_small:.2?} | |");
    println!("| build import-hierarchy body | {t_import:.2?} | |");
    println!();
    println!("one changed group (`PE Console`, one class parameter):");
    println!("| approach | API calls | payload bytes |");
    println!("|---|---:|---:|");
    println!(
        "| plan (create/update/delete) | {} | {} |",
        small_plan.operations.len(),
        small_plan.payload_bytes()
    );
    println!(
        "| import-hierarchy (replace) | 1 | {} |",
        import.body_bytes()
    );

    // ncship: the whole path of one poll on A and one apply on B.
    let (_, dump_bytes) = encode_dump(&one_changed);
    let origin = std::path::Path::new("groups.json");
    let t_encode = time(runs, || {
        black_box(encode_dump(black_box(&one_changed)));
    });
    let t_decode = time(runs, || {
        black_box(decode_dump(black_box(&dump_bytes), origin).unwrap());
    });
    let t_active = time(runs, || {
        let fetched = parse_dump(black_box(&text)).unwrap();
        let (out, _) = transform(&fetched, &mappings).unwrap();
        black_box(encode_dump(&out));
    });
    let t_passive = time(runs, || {
        let dump = decode_dump(black_box(&dump_bytes), origin).unwrap();
        let d = classifier::diff(&dump.groups, black_box(&desired)).unwrap();
        black_box(classifier::plan(&d).unwrap());
    });
    println!();
    println!("ncship, one changed group:");
    println!("| step | time | notes |");
    println!("|---|---:|---|");
    println!(
        "| A: parse + transform + encode dump (one poll) | {t_active:.2?} | encode alone {t_encode:.2?} |"
    );
    println!(
        "| B: decode + verify dump + diff + plan (one apply) | {t_passive:.2?} | decode + verify alone {t_decode:.2?}; {} call(s) |",
        small_plan.operations.len()
    );
    println!(
        "| dump file shipped | {} | whole file per change (no intra-file delta) |",
        kib(dump_bytes.len())
    );
}
