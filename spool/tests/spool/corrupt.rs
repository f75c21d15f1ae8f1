//! Torn, truncated, empty, foreign and hand-edited files all end in
//! corrupt/, are reported, and never reach a claim. A torn *tail* (what a
//! crash during an append leaves) is the one damage that is forgiven.

use crate::util::*;
use remediate_spool::*;

fn record_bytes(ts: &TempSpool, h: &HostId) -> (RunId, Vec<u8>) {
    let id = ts
        .spool
        .enqueue_blocking(run(h, "template"))
        .unwrap()
        .record
        .run_id;
    ts.spool
        .claim_next_blocking(h, &|_| false)
        .unwrap()
        .unwrap();
    ts.spool.start_attempt_blocking(&id).unwrap();
    let rec = ts.spool.complete_blocking(&id, ok_result()).unwrap();
    assert_eq!(rec.state, RunState::Succeeded);
    let bytes = std::fs::read(ts.spool.host_dir(h, Dir::Done).join(id.as_str())).unwrap();
    (id, bytes)
}

fn plant(ts: &TempSpool, h: &HostId, name: &str, bytes: &[u8]) {
    std::fs::write(ts.spool.host_dir(h, Dir::Queued).join(name), bytes).unwrap();
}

#[test]
fn damaged_files_are_quarantined_reported_and_never_claimed() {
    let mut ts = TempSpool::new();
    let h = host("h");
    let (_, good) = record_bytes(&ts, &h);
    let first_line_end = good.iter().position(|b| *b == b'\n').unwrap() + 1;
    // An enqueued-only record under a new id, for the variants below.
    let fresh = ts
        .spool
        .enqueue_blocking(run(&h, "victim"))
        .unwrap()
        .record
        .run_id;
    let fresh_path = ts.spool.host_dir(&h, Dir::Queued).join(fresh.as_str());
    let one = std::fs::read(&fresh_path).unwrap();
    std::fs::remove_file(&fresh_path).unwrap();

    let mut hand_edited = one.clone();
    let pos = one.windows(8).position(|w| w == b"\"victim\"").unwrap();
    hand_edited[pos + 1] = b'V';
    let mut torn_middle = good[..first_line_end + 10].to_vec();
    torn_middle.push(b'\n');
    torn_middle.extend_from_slice(&good[first_line_end..]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("truncated", one[..one.len() / 2].to_vec()),
        ("torn-middle", torn_middle),
        (
            "foreign",
            b"{\"runId\":\"x\",\"state\":\"queued\"}\n".to_vec(),
        ),
        ("hand-edited", hand_edited),
        // A valid record under another run's name.
        ("misnamed", one.clone()),
    ];
    for (name, bytes) in &cases {
        plant(&ts, &h, name, bytes);
    }
    // The claim path never hands one out, and quarantines what it touches.
    ts.reopen();
    assert!(
        ts.spool
            .claim_next_blocking(&h, &|_| false)
            .unwrap()
            .is_none()
    );
    let rep = ts.spool.recover_blocking().unwrap();
    let corrupt = ts.files(&h, Dir::Corrupt);
    for (name, _) in &cases {
        assert!(
            corrupt.iter().any(|f| f == name),
            "{name} not in corrupt/: {corrupt:?}"
        );
    }
    assert!(ts.files(&h, Dir::Queued).is_empty());
    // Reported: by the claim path's log, or by recovery.
    let reported = rep.quarantined.len();
    assert!(reported <= cases.len());
    assert_eq!(
        ts.spool.counts_blocking(Some(&h)).unwrap().corrupt,
        cases.len()
    );
    // Recovery of planted files in other directories reports each one.
    plant_in(&ts, &h, Dir::Held, "held-garbage", b"garbage\n");
    plant_in(&ts, &h, Dir::Running, "running-garbage", b"");
    let rep = ts.spool.recover_blocking().unwrap();
    assert_eq!(rep.quarantined.len(), 2, "{rep:?}");
    // Never deleted.
    assert_eq!(ts.files(&h, Dir::Corrupt).len(), cases.len() + 2);
}

fn plant_in(ts: &TempSpool, h: &HostId, d: Dir, name: &str, bytes: &[u8]) {
    std::fs::write(ts.spool.host_dir(h, d).join(name), bytes).unwrap();
}

#[test]
fn torn_tail_is_ignored_and_cut_before_the_next_append() {
    let ts = TempSpool::new();
    let h = host("h");
    let id = ts
        .spool
        .enqueue_blocking(run(&h, "a"))
        .unwrap()
        .record
        .run_id;
    let p = ts.spool.host_dir(&h, Dir::Queued).join(id.as_str());
    let mut bytes = std::fs::read(&p).unwrap();
    let len = bytes.len();
    bytes.extend_from_slice(b"R1 0000002a 1234");
    std::fs::write(&p, &bytes).unwrap();
    let c = ts
        .spool
        .claim_next_blocking(&h, &|_| false)
        .unwrap()
        .unwrap();
    assert_eq!(c.run_id, id);
    ts.spool.start_attempt_blocking(&id).unwrap();
    ts.spool.complete_blocking(&id, ok_result()).unwrap();
    let after = std::fs::read(ts.spool.host_dir(&h, Dir::Done).join(id.as_str())).unwrap();
    assert_eq!(&after[..len], &bytes[..len]);
    assert!(!after.windows(16).any(|w| w == b"R1 0000002a 1234"));
    assert_eq!(codec::decode(&after).unwrap().events.len(), 3);
}

#[test]
fn foreign_file_names_are_quarantined_under_a_safe_name() {
    let ts = TempSpool::new();
    let h = host("h");
    ts.spool.ensure_host(&h).unwrap();
    plant_in(&ts, &h, Dir::Queued, "bad name; rm -rf", b"x");
    let rep = ts.spool.recover_blocking().unwrap();
    assert_eq!(rep.quarantined.len(), 1);
    let c = ts.files(&h, Dir::Corrupt);
    assert_eq!(c.len(), 1);
    assert!(c[0].starts_with("foreign-"));
}
