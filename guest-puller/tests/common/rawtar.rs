//! A tiny raw tar writer for tests: it writes whatever names we give it,
//! including the hostile ones a well-behaved builder refuses.

#![allow(dead_code)]

pub struct RawTar {
    pub buf: Vec<u8>,
}

fn octal(field: &mut [u8], v: u64) {
    let n = field.len() - 1;
    let s = format!("{:0width$o}", v, width = n);
    field[..n].copy_from_slice(s.as_bytes());
    field[n] = 0;
}

impl RawTar {
    pub fn new() -> Self {
        Self { buf: Vec::new() }
    }

    pub fn entry(&mut self, name: &str, typeflag: u8, data: &[u8], link: &str, mode: u32) -> &mut Self {
        self.entry_dev(name, typeflag, data, link, mode, 0, 0)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn entry_dev(
        &mut self,
        name: &str,
        typeflag: u8,
        data: &[u8],
        link: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> &mut Self {
        let mut h = [0u8; 512];
        assert!(name.len() <= 100, "use pax for long names");
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 1_600_000_000);
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], major as u64);
        octal(&mut h[337..345], minor as u64);
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| *b as u64).sum();
        let s = format!("{:06o}\0 ", sum);
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.entry(name, b'0', data, "", 0o644)
    }
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(name, b'5', b"", "", 0o755)
    }
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, b'2', b"", target, 0o777)
    }
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(name, b'1', b"", target, 0o644)
    }
    /// A pax extended header carrying `records` for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = format!(" {k}=").len() + v.len() + 1;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        self.entry("PaxHeaders/x", b'x', &body, "", 0o644)
    }
    pub fn finish(&mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf.clone()
    }
}
