//! Writer of `.pt` files byte-compatible with `torch.save` of one bare float32 tensor:
//! a stored (uncompressed) zip with 64-byte aligned records, a protocol-2 pickle calling
//! `torch._utils._rebuild_tensor_v2`, and zip64 end records, as PyTorch's stream writer does.

/// Alignment of every record's payload inside the archive (PyTorch's `kFieldAlignment`).
const ALIGNMENT: usize = 64;
/// Size of a zip local file header without name and extra field.
const LOCAL_HEADER_LEN: usize = 30;

/// Describes one strided float32 tensor to serialise.
#[derive(Debug, Clone, Copy)]
pub struct PtTensor<'a> {
    /// Logical shape, e.g. `[6, 4, 21]`.
    pub size: &'a [usize],
    /// Element strides into `storage`, e.g. `[84, 1, 4]`.
    pub stride: &'a [usize],
    /// Offset of element `[0, 0, 0]` in `storage`.
    pub offset: usize,
    /// The raw storage, in storage order (not necessarily C order of `size`).
    pub storage: &'a [f32],
}

/// Encodes `tensor` as the bytes of a `torch.save` file whose zip folder is `stem`.
///
/// `serialization_id` is the 40-character content of `<stem>/.data/serialization_id`
/// (PyTorch writes 40 decimal digits there).
pub fn encode_pt(stem: &str, tensor: PtTensor<'_>, serialization_id: &str) -> Vec<u8> {
    let pickle = tensor_pickle(tensor);
    let storage: Vec<u8> = tensor
        .storage
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let records: [(String, &[u8]); 5] = [
        (format!("{stem}/data.pkl"), &pickle),
        (format!("{stem}/byteorder"), b"little"),
        (format!("{stem}/data/0"), &storage),
        (format!("{stem}/version"), b"3\n"),
        (
            format!("{stem}/.data/serialization_id"),
            serialization_id.as_bytes(),
        ),
    ];
    let mut zip = ZipWriter::default();
    for (name, data) in &records {
        zip.add(name, data);
    }
    zip.finish()
}

/// A deterministic 40-digit serialization id built from two numbers, formatted like
/// PyTorch's (two zero-padded 20-digit decimal fields).
pub fn serialization_id(a: u64, b: u64) -> String {
    format!("{a:020}{b:020}")
}

/// The protocol-2 pickle of `_rebuild_tensor_v2(persistent_id, offset, size, stride,
/// False, OrderedDict())`, with the memo puts PyTorch's pickler emits.
pub fn tensor_pickle(t: PtTensor<'_>) -> Vec<u8> {
    let mut p = Pickle::default();
    p.out.extend_from_slice(&[0x80, 2]); // PROTO 2
    p.global("torch._utils", "_rebuild_tensor_v2");
    p.put();
    p.out.push(b'('); // MARK (argument tuple)
    p.out.push(b'('); // MARK (persistent id tuple)
    p.unicode("storage");
    p.put();
    p.global("torch", "FloatStorage");
    p.put();
    p.unicode("0");
    p.put();
    p.unicode("cpu");
    p.put();
    p.int(t.storage.len() as u64);
    p.out.push(b't'); // TUPLE
    p.put();
    p.out.push(b'Q'); // BINPERSID
    p.int(t.offset as u64);
    p.tuple(t.size);
    p.put();
    p.tuple(t.stride);
    p.put();
    p.out.push(0x89); // NEWFALSE (requires_grad)
    p.global("collections", "OrderedDict");
    p.put();
    p.out.push(b')'); // EMPTY_TUPLE
    p.out.push(b'R'); // REDUCE -> OrderedDict()
    p.put();
    p.out.push(b't'); // TUPLE (arguments)
    p.put();
    p.out.push(b'R'); // REDUCE -> tensor
    p.put();
    p.out.push(b'.'); // STOP
    p.out
}

/// Minimal pickle emitter for the opcodes above.
#[derive(Default)]
struct Pickle {
    out: Vec<u8>,
    memo: u32,
}

impl Pickle {
    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn put(&mut self) {
        if self.memo < 256 {
            self.out.push(b'q'); // BINPUT
            self.out.push(self.memo as u8);
        } else {
            self.out.push(b'r'); // LONG_BINPUT
            self.out.extend_from_slice(&self.memo.to_le_bytes());
        }
        self.memo += 1;
    }

    fn unicode(&mut self, s: &str) {
        self.out.push(b'X'); // BINUNICODE
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: u64) {
        if v < 256 {
            self.out.push(b'K'); // BININT1
            self.out.push(v as u8);
        } else if v < 65536 {
            self.out.push(b'M'); // BININT2
            self.out.extend_from_slice(&(v as u16).to_le_bytes());
        } else if v <= i32::MAX as u64 {
            self.out.push(b'J'); // BININT
            self.out.extend_from_slice(&(v as i32).to_le_bytes());
        } else {
            // LONG1 with a little-endian two's-complement payload (always positive here).
            let mut bytes = v.to_le_bytes().to_vec();
            while bytes.len() > 1 && bytes[bytes.len() - 1] == 0 && bytes[bytes.len() - 2] < 0x80 {
                bytes.pop();
            }
            if bytes[bytes.len() - 1] >= 0x80 {
                bytes.push(0);
            }
            self.out.push(0x8a);
            self.out.push(bytes.len() as u8);
            self.out.extend_from_slice(&bytes);
        }
    }

    fn tuple(&mut self, items: &[usize]) {
        match items.len() {
            0 => self.out.push(b')'),
            1..=3 => {
                for &v in items {
                    self.int(v as u64);
                }
                self.out.push([0x85, 0x86, 0x87][items.len() - 1]); // TUPLE1..3
            }
            _ => {
                self.out.push(b'(');
                for &v in items {
                    self.int(v as u64);
                }
                self.out.push(b't');
            }
        }
    }
}

/// One record already written, remembered for the central directory.
struct Entry {
    name: String,
    crc: u32,
    len: u32,
    offset: u32,
}

/// A zip writer producing exactly PyTorch's record layout (stored, data descriptors,
/// `FB` padding extra fields, zip64 end records). Archives stay far below 4 GiB.
#[derive(Default)]
struct ZipWriter {
    out: Vec<u8>,
    entries: Vec<Entry>,
}

impl ZipWriter {
    fn add(&mut self, name: &str, data: &[u8]) {
        let offset = self.out.len();
        let start = offset + LOCAL_HEADER_LEN + name.len() + 4;
        let pad = (ALIGNMENT - start % ALIGNMENT) % ALIGNMENT;
        let crc = crc32(data);
        let o = &mut self.out;
        o.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes()); // version needed
        o.extend_from_slice(&0x0808u16.to_le_bytes()); // flags: data descriptor, UTF-8
        o.extend_from_slice(&0u16.to_le_bytes()); // method: stored
        o.extend_from_slice(&0u32.to_le_bytes()); // DOS time + date
        o.extend_from_slice(&[0u8; 12]); // crc, sizes: in the data descriptor
        o.extend_from_slice(&(name.len() as u16).to_le_bytes());
        o.extend_from_slice(&((pad + 4) as u16).to_le_bytes());
        o.extend_from_slice(name.as_bytes());
        o.extend_from_slice(b"FB");
        o.extend_from_slice(&(pad as u16).to_le_bytes());
        o.resize(o.len() + pad, b'Z');
        o.extend_from_slice(data);
        o.extend_from_slice(&0x0807_4b50u32.to_le_bytes());
        o.extend_from_slice(&crc.to_le_bytes());
        o.extend_from_slice(&(data.len() as u32).to_le_bytes());
        o.extend_from_slice(&(data.len() as u32).to_le_bytes());
        self.entries.push(Entry {
            name: name.to_string(),
            crc,
            len: data.len() as u32,
            offset: offset as u32,
        });
    }

    fn finish(mut self) -> Vec<u8> {
        let cd_start = self.out.len();
        let o = &mut self.out;
        for e in &self.entries {
            o.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
            o.extend_from_slice(&0u16.to_le_bytes()); // version made by
            o.extend_from_slice(&0u16.to_le_bytes()); // version needed
            o.extend_from_slice(&0x0808u16.to_le_bytes());
            o.extend_from_slice(&0u16.to_le_bytes()); // stored
            o.extend_from_slice(&0u32.to_le_bytes()); // time + date
            o.extend_from_slice(&e.crc.to_le_bytes());
            o.extend_from_slice(&e.len.to_le_bytes());
            o.extend_from_slice(&e.len.to_le_bytes());
            o.extend_from_slice(&(e.name.len() as u16).to_le_bytes());
            o.extend_from_slice(&[0u8; 12]); // extra, comment, disk, attributes
            o.extend_from_slice(&e.offset.to_le_bytes());
            o.extend_from_slice(e.name.as_bytes());
        }
        let cd_len = (o.len() - cd_start) as u64;
        let n = self.entries.len() as u64;
        let eocd64 = o.len() as u64;
        // zip64 end of central directory record
        o.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        o.extend_from_slice(&44u64.to_le_bytes());
        o.extend_from_slice(&0x031eu16.to_le_bytes()); // made by
        o.extend_from_slice(&0x002du16.to_le_bytes()); // needed: 4.5
        o.extend_from_slice(&0u32.to_le_bytes());
        o.extend_from_slice(&0u32.to_le_bytes());
        o.extend_from_slice(&n.to_le_bytes());
        o.extend_from_slice(&n.to_le_bytes());
        o.extend_from_slice(&cd_len.to_le_bytes());
        o.extend_from_slice(&(cd_start as u64).to_le_bytes());
        // zip64 end of central directory locator
        o.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        o.extend_from_slice(&0u32.to_le_bytes());
        o.extend_from_slice(&eocd64.to_le_bytes());
        o.extend_from_slice(&1u32.to_le_bytes());
        // end of central directory record
        o.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes());
        o.extend_from_slice(&(n as u16).to_le_bytes());
        o.extend_from_slice(&(n as u16).to_le_bytes());
        o.extend_from_slice(&(cd_len as u32).to_le_bytes());
        o.extend_from_slice(&(cd_start as u32).to_le_bytes());
        o.extend_from_slice(&0u16.to_le_bytes()); // comment length
        self.out
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320) as zip requires.
pub fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        // The CRC-32 check value of "123456789" is 0xCBF43926 (published constant).
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }
}
