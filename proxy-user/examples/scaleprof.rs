// TEMPORARY profiling harness (not to be committed).
use std::path::Path;
use std::time::Instant;
fn main() {
    let dir = std::env::args().nth(1).expect("dir");
    let dir = Path::new(&dir);
    let t = Instant::now();
    let docs = keel::source::read_dir(dir).unwrap();
    eprintln!("read_dir: {:?} ({} docs)", t.elapsed(), docs.len());
    let t = Instant::now();
    let rep = keel::policy::build(&docs);
    eprintln!(
        "policy::build: {:?} (errors {}, warnings {})",
        t.elapsed(),
        rep.errors.len(),
        rep.warnings.len()
    );
    drop(rep);
    let mut r = keel::state::reload::Reloader::new(dir);
    for i in 0..2 {
        let t = Instant::now();
        let loaded = r.load().unwrap();
        eprintln!("reloader.load #{i}: {:?}", t.elapsed());
        let snap = std::sync::Arc::new(loaded.serving);
        let t = Instant::now();
        let reg = keel::upstream::ClusterRegistry::default();
        let table = keel::routing::RouteTable::build(&snap, &reg);
        eprintln!(
            "RouteTable::build: {:?} views {}",
            t.elapsed(),
            table.view_count()
        );
        let t = Instant::now();
        let m = keel::state::resolve_pod_cgroups(&snap, Path::new("/sys/fs/cgroup/nonexistent"));
        eprintln!("resolve_pod_cgroups: {:?} {}", t.elapsed(), m.len());
        let t = Instant::now();
        let d = snap.meshed_destinations();
        eprintln!("meshed_destinations: {:?} {}", t.elapsed(), d.len());
        let t = Instant::now();
        let state = keel::state::State::default();
        state.publish(snap.clone(), m);
        eprintln!("publish: {:?}", t.elapsed());
        let t = Instant::now();
        let fp = keel::state::reload::fingerprint(dir).unwrap();
        eprintln!("fingerprint: {:?} {:?}", t.elapsed(), fp == fp);
    }
}
