//! The file in which `start` remembers each containerd's version
//! (`/run/containerd/wasishim/containerd-versions`): read back by every
//! later start, whatever it holds, and rewritten with the new line.
//!
//! Input: the file, then optionally a 0xFF byte and the version containerd
//! reports.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasishim_shim::fuzzing::{containerd_versions, ReplyForm};

const CALLER: &str = "4242 123456 /run/containerd/containerd.sock";

fuzz_target!(|data: &[u8]| {
    let (file, version) = match data.iter().position(|&b| b == 0xFF) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"2.1.9+ds1"[..]),
    };
    let file = String::from_utf8_lossy(file);
    let version = String::from_utf8_lossy(version);
    let (remembered, form, rewritten) = containerd_versions(&file, CALLER, &version);
    if let Some(v) = &remembered {
        assert!(!v.is_empty());
        // One leading 'v' is allowed, as in "v2.1.9".
        let v = v.trim();
        let major_2 = v
            .strip_prefix('v')
            .unwrap_or(v)
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse::<u32>().ok())
            .is_some_and(|m| m >= 2);
        assert_eq!(form == ReplyForm::JsonV3, major_2, "{v:?}");
    } else {
        assert_eq!(form, ReplyForm::BareAddress);
        // The rewritten file remembers a version that fits on one line,
        // as containerd's do.
        if !version.is_empty() && !version.contains(['\n', '\r']) {
            let (again, _, _) = containerd_versions(&rewritten, CALLER, "x");
            assert_eq!(again.as_deref(), Some(version.as_ref()));
        }
    }
    assert!(rewritten.ends_with('\n'));
});
