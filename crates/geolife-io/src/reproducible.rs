//! Byte-reproducible safetensors files. `safetensors::serialize` takes the metadata as a
//! `HashMap`, whose iteration order differs between processes, so two runs that compute the
//! same tensors wrote different bytes (the `__metadata__` keys in another order). Rewriting
//! the header with its keys sorted makes the file a function of its content: a resumed
//! pipeline then reproduces an uninterrupted one byte for byte.

use std::collections::BTreeMap;

/// Sorts the keys of a serialized safetensors header in place (same length: the JSON holds
/// the same tokens, and the header keeps its padding). Bytes that are not a well-formed
/// safetensors header are left as they are.
pub fn sort_safetensors_header(buf: &mut [u8]) {
    let Some(len) = buf
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
    else {
        return;
    };
    let Some(header) = buf.get(8..8usize.saturating_add(len)) else {
        return;
    };
    let Ok(map) = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(header) else {
        return;
    };
    let map: BTreeMap<String, serde_json::Value> = map
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                // `BTreeMap` re-collects the object sorted, whatever serde_json's map type.
                serde_json::Value::Object(o) => serde_json::to_value(
                    o.into_iter()
                        .collect::<BTreeMap<String, serde_json::Value>>(),
                )
                .unwrap_or(serde_json::Value::Null),
                other => other,
            };
            (k, v)
        })
        .collect();
    let Ok(text) = serde_json::to_vec(&map) else {
        return;
    };
    if text.len() <= len {
        buf[8..8 + text.len()].copy_from_slice(&text);
        buf[8 + text.len()..8 + len].fill(b' ');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.as_bytes().to_vec();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut v = (h.len() as u64).to_le_bytes().to_vec();
        v.extend(h);
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn two_metadata_orders_give_the_same_bytes() {
        let t = r#""x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}"#;
        let mut a = file(
            &format!(r#"{{"__metadata__":{{"b":"2","a":"1"}},{t}}}"#),
            &[0, 0, 128, 63],
        );
        let mut b = file(
            &format!(r#"{{"__metadata__":{{"a":"1","b":"2"}},{t}}}"#),
            &[0, 0, 128, 63],
        );
        assert_ne!(a, b);
        sort_safetensors_header(&mut a);
        sort_safetensors_header(&mut b);
        assert_eq!(a, b);
        let n = u64::from_le_bytes(a[..8].try_into().unwrap()) as usize;
        let v: serde_json::Value = serde_json::from_slice(&a[8..8 + n]).unwrap();
        assert_eq!(v["__metadata__"]["a"], "1");
        assert_eq!(v["x"]["data_offsets"][1], 4);
        assert_eq!(&a[8 + n..], &[0, 0, 128, 63]);
    }

    #[test]
    fn other_bytes_are_left_alone() {
        for bytes in [
            &b"abc"[..],
            &[255u8; 16][..],
            &[4, 0, 0, 0, 0, 0, 0, 0, b'{', b'x'][..],
        ] {
            let mut v = bytes.to_vec();
            sort_safetensors_header(&mut v);
            assert_eq!(v, bytes);
        }
    }
}
