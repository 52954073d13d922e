// Link a non-PIE executable, as Debian builds containerd and its runc shim.
// In a PIE the dynamic loader relocates 1.1 MiB of read-only data at every
// start, which leaves that much private dirty memory in each shim process
// and costs each `start` and `delete` exec the page faults; in a non-PIE
// executable those pages stay clean file pages shared by all shims. The
// executable's own code then loads at a fixed address (libraries, heap and
// stacks are still randomized).
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
}
