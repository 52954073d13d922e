//! A large WASI command module, written directly in the binary format: many
//! functions of straight-line integer arithmetic, so compiling it costs
//! what a big real module costs, while running it costs nothing (`_start`
//! calls one function and returns).

/// A module of about `bytes` bytes. `nonce` goes into a custom section, so
/// modules with different nonces compile to the same code but have different
/// digests (and so different compile-cache keys).
pub fn module(bytes: usize, nonce: u64) -> Vec<u8> {
    // One body: local.get 0, then ROUNDS x (i32.const a, i32.add,
    // i32.const b, i32.mul, i32.const c, i32.xor, i32.const 7, i32.rotl), end.
    const ROUNDS: usize = 64;
    let body_for = |f: u32| -> Vec<u8> {
        let mut b = vec![0x00, 0x20, 0x00]; // no locals; local.get 0
        for r in 0..ROUNDS as u32 {
            let k = f.wrapping_mul(2_654_435_761).wrapping_add(r);
            for (op, c) in [
                (0x6a, k | 1),
                (0x6c, k.rotate_left(7) | 3),
                (0x73, k.rotate_left(13)),
            ] {
                b.push(0x41);
                sleb(&mut b, c as i32 as i64);
                b.push(op);
            }
            b.extend_from_slice(&[0x41, 0x07, 0x77]);
        }
        b.push(0x0b);
        b
    };
    let per_fn = body_for(1).len() + 3;
    let n = (bytes / per_fn).max(1) as u32;

    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 = (i32) -> i32, 1 = () -> ().
    section(
        &mut m,
        1,
        &[0x02, 0x60, 0x01, 0x7f, 0x01, 0x7f, 0x60, 0x00, 0x00],
    );
    // Functions: n of type 0, then _start of type 1.
    let mut funcs = Vec::new();
    uleb(&mut funcs, n as u64 + 1);
    funcs.extend(std::iter::repeat_n(0u8, n as usize));
    funcs.push(1);
    section(&mut m, 3, &funcs);
    // One page of memory.
    section(&mut m, 5, &[0x01, 0x00, 0x01]);
    // Exports: memory, _start.
    let mut exports = vec![0x02];
    name(&mut exports, "memory");
    exports.extend_from_slice(&[0x02, 0x00]);
    name(&mut exports, "_start");
    exports.push(0x00);
    uleb(&mut exports, n as u64);
    section(&mut m, 7, &exports);
    // Code.
    let mut code = Vec::with_capacity(bytes + 1024);
    uleb(&mut code, n as u64 + 1);
    for f in 0..n {
        let body = body_for(f);
        uleb(&mut code, body.len() as u64);
        code.extend_from_slice(&body);
    }
    // _start: i32.const 1, call 0, drop, end.
    let start = [0x00, 0x41, 0x01, 0x10, 0x00, 0x1a, 0x0b];
    uleb(&mut code, start.len() as u64);
    code.extend_from_slice(&start);
    section(&mut m, 10, &code);
    // Custom section "wasishim-bench-nonce".
    let mut custom = Vec::new();
    name(&mut custom, "wasishim-bench-nonce");
    custom.extend_from_slice(&nonce.to_le_bytes());
    section(&mut m, 0, &custom);
    m
}

fn section(m: &mut Vec<u8>, id: u8, payload: &[u8]) {
    m.push(id);
    uleb(m, payload.len() as u64);
    m.extend_from_slice(payload);
}

fn name(out: &mut Vec<u8>, s: &str) {
    uleb(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

fn uleb(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn sleb(out: &mut Vec<u8>, mut v: i64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        let done = (v == 0 && byte & 0x40 == 0) || (v == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leb128() {
        let mut v = Vec::new();
        sleb(&mut v, -1);
        sleb(&mut v, 64);
        uleb(&mut v, 300);
        assert_eq!(v, [0x7f, 0xc0, 0x00, 0xac, 0x02]);
    }

    #[test]
    fn size_and_nonce() {
        let a = module(1 << 20, 1);
        let b = module(1 << 20, 2);
        assert!(a.len() > 900_000 && a.len() < 1_100_000, "{}", a.len());
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len());
    }
}
