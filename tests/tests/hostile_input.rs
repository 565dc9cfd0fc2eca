//! Hostile and broken input (issue 13): files crafted to make a reader allocate, recurse or spin
//! without bound must be refused early with an error naming the file and what is wrong. Every
//! hostile file is generated here; none is committed.

use std::collections::BTreeMap;
use std::path::Path;

use byol_core::checkpoint::{load_training_state, save_training_state};
use byol_core::io::{write_safetensors, SafetensorsFile, ENCODER_CONFIG_KEY, MODEL_CONFIG_KEY};
use byol_core::optim::{Lars, LarsConfig};
use byol_core::weights::load_encoder;
use byol_tests::fixtures::{pickle_memo_bomb, pickle_nested_lists};
use byol_tests::{save_tiny_encoder, tiny_byol};
use candle_core::Device;

/// Rewrites the safetensors file at `path` with metadata `key` passed through `edit` (JSON).
fn edit_metadata(path: &Path, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let file = SafetensorsFile::read(path, &Device::Cpu).unwrap();
    let mut meta: BTreeMap<String, String> = file.metadata.clone().into_iter().collect();
    let mut value: serde_json::Value = serde_json::from_str(&meta[key]).unwrap();
    edit(&mut value);
    meta.insert(key.into(), value.to_string());
    write_safetensors(path, file.tensors.into_iter().collect(), meta).unwrap();
}

#[test]
fn encoder_metadata_cannot_drive_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    save_tiny_encoder(&path, 0);
    // Before the check this reserved ~352 GB for a file of a few hundred kilobytes.
    edit_metadata(&path, ENCODER_CONFIG_KEY, |v| v["width"] = 100_000.into());
    let message = load_encoder(&path, &Device::Cpu, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("huge.safetensors"), "{message}");
    assert!(message.contains("conv1.weight"), "{message}");

    // An overflowing product is a clean error, not a panic.
    edit_metadata(&path, ENCODER_CONFIG_KEY, |v| {
        v["base_channels"] = serde_json::json!(u64::MAX)
    });
    let message = load_encoder(&path, &Device::Cpu, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("huge.safetensors"), "{message}");
}

#[test]
fn training_state_metadata_cannot_drive_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.safetensors");
    let model = tiny_byol(0);
    save_training_state(
        &path,
        &model,
        &Lars::new(LarsConfig::default()),
        3,
        Default::default(),
    )
    .unwrap();
    assert!(load_training_state(&path, &Device::Cpu).is_ok());
    edit_metadata(&path, MODEL_CONFIG_KEY, |v| {
        v["projector"]["hidden_dim"] = 10_000_000.into()
    });
    let message = load_training_state(&path, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("state.safetensors"), "{message}");
    assert!(message.contains("online.projector.0.weight"), "{message}");
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn idx_header(dims: &[u32]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

#[test]
fn idx_gzip_bomb_is_refused_from_its_header_without_inflating() {
    use byol_core::data::idx::read_idx;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    // 2 GiB claimed, 8 MiB of zeros actually compressed (a few KB): the reader used to inflate
    // everything before comparing sizes.
    let mut body = idx_header(&[32768, 256, 256]);
    body.resize(body.len() + (8 << 20), 0);
    std::fs::write(&path, gzip(&body)).unwrap();
    let start = std::time::Instant::now();
    let message = read_idx(&path).unwrap_err().to_string();
    assert!(start.elapsed().as_secs_f64() < 1.0, "{:?}", start.elapsed());
    assert!(message.contains("train-images-idx3-ubyte.gz"), "{message}");
    assert!(message.contains("refused without inflating"), "{message}");

    // Dimensions whose product overflows.
    std::fs::write(&path, gzip(&idx_header(&[u32::MAX, u32::MAX, u32::MAX]))).unwrap();
    let message = read_idx(&path).unwrap_err().to_string();
    assert!(message.contains("overflow"), "{message}");

    // A plain file is checked against its length before it is read.
    let plain = dir.path().join("plain-idx");
    std::fs::write(&plain, idx_header(&[60000, 28, 28])).unwrap();
    let message = read_idx(&plain).unwrap_err().to_string();
    assert!(
        message.contains("plain-idx") && message.contains("47040000"),
        "{message}"
    );

    // A stream longer than its header says is refused too, and a valid gzip still reads.
    let mut long = idx_header(&[2, 2]);
    long.extend_from_slice(&[1, 2, 3, 4, 5]);
    std::fs::write(&path, gzip(&long)).unwrap();
    assert!(read_idx(&path).unwrap_err().to_string().contains("or more"));
    std::fs::write(&path, gzip(&long[..long.len() - 1])).unwrap();
    assert_eq!(read_idx(&path).unwrap().data, vec![1, 2, 3, 4]);
}

/// A PNG with an IHDR for `width × height` RGB and one tiny IDAT: tiny on disk, huge decoded.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &[0x78, 0x01]);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn huge_png_header_is_refused_before_decoding() {
    use byol_core::data::decode::{decode_file, ColorMode};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bomb.png");
    std::fs::write(&path, png_header_only(20_000, 20_000)).unwrap();
    let message = decode_file(&path, ColorMode::Rgb).unwrap_err().to_string();
    assert!(message.contains("bomb.png"), "{message}");
    assert!(message.contains("400000000 pixels"), "{message}");
    assert!(message.contains("BYOL_MAX_IMAGE_PIXELS"), "{message}");
}

#[test]
fn deeply_nested_pickle_is_an_error_not_a_stack_overflow() {
    use byol_core::import::pickle;
    // A million-deep list whose recursive drop used to overflow the stack and abort the whole
    // test binary.
    let bytes = pickle_nested_lists(1_000_000);
    let message = pickle::read(&bytes).unwrap_err().to_string();
    assert!(message.contains("nested deeper"), "{message}");

    // The same through the weights reader names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deep.pkl");
    std::fs::write(&path, &bytes).unwrap();
    let message = byol_core::weights::read_weights(&path, &Device::Cpu)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        message.contains("deep.pkl") && message.contains("nested"),
        "{message}"
    );
}

#[test]
fn pickle_memo_bomb_is_an_error_not_unbounded_memory() {
    use byol_core::import::pickle;
    let bytes = pickle_memo_bomb();
    let start = std::time::Instant::now();
    let message = pickle::read(&bytes).unwrap_err().to_string();
    assert!(message.contains("memo bomb"), "{message}");
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

/// A zip of stored (uncompressed) entries, as `torch.save` writes them.
fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let (mut out, mut central) = (Vec::new(), Vec::new());
    for (name, data) in entries {
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let fixed = |sig: u32| {
            let mut h = sig.to_le_bytes().to_vec();
            h.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            h.extend_from_slice(&crc.sum().to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h
        };
        out.extend(fixed(0x0403_4b50));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[20, 0]);
        central.extend(fixed(0x0201_4b50)[4..].iter());
        central.extend_from_slice(&[0; 12]);
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    let n = (entries.len() as u16).to_le_bytes();
    out.extend_from_slice(&[n[0], n[1], n[0], n[1]]);
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out
}

/// A `torch.save` state dict `{"w": FloatTensor of `shape`}` whose storage holds `data`.
fn pth(shape: [u32; 2], data: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    p.extend_from_slice(b"X\x01\x00\x00\x00w");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.extend_from_slice(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\n");
    p.extend_from_slice(b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00(");
    for d in shape {
        p.push(b'J');
        p.extend_from_slice(&d.to_le_bytes());
    }
    p.extend_from_slice(b"t(J");
    p.extend_from_slice(&shape[1].to_le_bytes());
    p.extend_from_slice(b"K\x01t\x89ccollections\nOrderedDict\n)RtRs.");
    stored_zip(&[("archive/data.pkl", &p), ("archive/data/0", data)])
}

#[test]
fn lying_pth_storage_names_the_tensor() {
    use byol_core::weights::read_weights;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lying.pth");
    // The honest file reads.
    std::fs::write(&path, pth([2, 3], &[0; 24])).unwrap();
    let file = read_weights(&path, &Device::Cpu).unwrap();
    assert_eq!(file.tensors["w"].dims(), &[2, 3]);
    // Storage shorter than the shape: used to say only "failed to fill whole buffer".
    std::fs::write(&path, pth([2, 3], &[0; 8])).unwrap();
    let message = read_weights(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(
        message.contains("lying.pth") && message.contains("`w`"),
        "{message}"
    );
    // A shape far beyond the file is refused before candle allocates for it.
    std::fs::write(&path, pth([i32::MAX as u32; 2], &[0; 8])).unwrap();
    let message = read_weights(&path, &Device::Cpu).err().unwrap().to_string();
    assert!(
        message.contains("`w`") && message.contains("more than the file"),
        "{message}"
    );
}

#[test]
fn weights_that_are_not_regular_files_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    let mut cases = vec![
        (dir.path().to_path_buf(), "is a directory"),
        (Path::new("/dev/null").to_path_buf(), "not a regular file"),
    ];
    if made.is_ok_and(|s| s.success()) {
        // Opening a FIFO blocks until a writer comes: this used to hang.
        cases.push((fifo, "not a regular file"));
    }
    for (path, expected) in cases {
        let message = load_encoder(&path, &Device::Cpu, None)
            .err()
            .expect("refused")
            .to_string();
        assert!(message.contains(expected), "{message}");
        let value = path.to_str().unwrap();
        let message = byol_hub::resolve_weights(value).unwrap_err().to_string();
        assert!(
            message.contains(expected) && message.contains(value),
            "{message}"
        );
    }
}

#[test]
fn corrupt_fashion_mnist_is_not_reported_missing() {
    use byol_core::data::Split;
    use byol_core::data::{DatasetKind, DatasetSource};
    let dir = tempfile::tempdir().unwrap();
    byol_tests::write_mnist_like(dir.path(), 8, 4, 10, 0);
    let images = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("train-images"))
        .unwrap();
    std::fs::write(&images, [0, 0, 8, 3, 0, 0, 0, 9]).unwrap();
    let source = DatasetSource::new(DatasetKind::FashionMnist, Some(dir.path().to_path_buf()));
    let message = source.open(Split::Train).err().unwrap().to_string();
    assert!(message.contains("train-images"), "{message}");
    assert!(!message.contains("install"), "{message}");
    // Really missing files still get the hint.
    std::fs::remove_file(&images).unwrap();
    let message = source.open(Split::Train).err().unwrap().to_string();
    assert!(message.contains("install"), "{message}");
}

/// xorshift64: a tiny deterministic mutator source, no dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to four random edits of `valid`: bit flips, random bytes, truncation, insertion, a
/// 32-bit length field set to something extreme.
fn mutate(rng: &mut XorShift, valid: &[u8]) -> Vec<u8> {
    let mut b = valid.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(5) {
            0 if !b.is_empty() => b[at] ^= 1 << rng.below(8),
            1 if !b.is_empty() => b[at] = rng.next() as u8,
            2 => b.truncate(at),
            3 => b.insert(at, rng.next() as u8),
            _ if b.len() >= at + 4 => {
                let v = [0u32, 1, 0x7fff_ffff, u32::MAX, rng.next() as u32][rng.below(5)];
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            _ => {}
        }
    }
    b
}

/// Feeds `count` mutations of `valid` to `read` as files named `name`: none may panic, and every
/// error must name the file.
fn fuzz(
    name: &str,
    valid: &[u8],
    count: usize,
    read: impl Fn(&Path) -> Result<(), String> + std::panic::RefUnwindSafe,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    std::fs::write(&path, valid).unwrap();
    if let Err(message) = read(&path) {
        assert!(message.contains(name), "unmutated {name}: {message}");
    }
    for i in 0..count {
        let bytes = mutate(&mut rng, valid);
        std::fs::write(&path, &bytes).unwrap();
        match std::panic::catch_unwind(|| read(&path)) {
            Ok(Ok(())) => {}
            Ok(Err(message)) => assert!(
                message.contains(name),
                "mutation {i} of {name}: error without the file name: {message}"
            ),
            Err(_) => panic!("mutation {i} of {name} panicked; bytes: {bytes:?}"),
        }
    }
}

#[test]
fn mutated_files_give_errors_naming_them_never_panics() {
    use byol_core::data::decode::{decode_file, ColorMode};
    use byol_core::data::idx::read_idx;
    use byol_core::weights::read_weights;
    let count = 2000;

    let dir = tempfile::tempdir().unwrap();
    let st = dir.path().join("valid.safetensors");
    let tensor = candle_core::Tensor::arange(0f32, 6., &Device::Cpu)
        .unwrap()
        .reshape((2, 3))
        .unwrap();
    let meta = BTreeMap::from([(ENCODER_CONFIG_KEY.to_string(), "{\"depth\":18}".into())]);
    write_safetensors(&st, vec![("conv1.weight".into(), tensor)], meta).unwrap();
    let weights = |p: &Path| {
        read_weights(p, &Device::Cpu)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    fuzz(
        "m.safetensors",
        &std::fs::read(&st).unwrap(),
        count,
        weights,
    );

    // {"a": [1, 2.5, "x", memo GET of the list's first element], "b": (None, True)}, memoized.
    let mut pickle = vec![
        0x80, 2, b'}', b'q', 0, b'(', b'X', 1, 0, 0, 0, b'a', b']', b'q', 1,
    ];
    pickle.extend_from_slice(&[b'(', b'K', 1, b'q', 2, b'G']);
    pickle.extend_from_slice(&2.5f64.to_be_bytes());
    pickle.extend_from_slice(&[0x8c, 1, b'x', b'h', 2, b'e', b'X', 1, 0, 0, 0, b'b']);
    pickle.extend_from_slice(&[b'N', 0x88, 0x86, b'u', b'.']);
    assert!(byol_core::import::pickle::read(&pickle).is_ok());
    // Not a checkpoint, so the weights reader refuses even the valid pickle (naming the file);
    // the bare reader runs too, under the same `catch_unwind`.
    fuzz("m.pkl", &pickle, count, |p| {
        let _ = byol_core::import::pickle::read(&std::fs::read(p).unwrap());
        weights(p)
    });

    // The pre-1.6 torch.save stream (five pickles, then raw storages) through the weights reader
    // and `inspect`; its object pickle alone through the inert reader of torch files.
    use byol_core::import::pickle::{read_at, read_inert, Globals};
    let legacy = std::fs::read(byol_tests::fixture("frameworks/torchvision-legacy.pth")).unwrap();
    fuzz("m-legacy.pth", &legacy, count / 4, |p| {
        let read = weights(p);
        let inspected = byol_core::weights::inspect_weights(p, Default::default())
            .map(|_| ())
            .map_err(|e| e.to_string());
        read.and(inspected)
    });
    let mut start = 0;
    for _ in 0..3 {
        start = read_at(&legacy, start, Globals::Inert).unwrap().1;
    }
    let end = read_at(&legacy, start, Globals::Inert).unwrap().1;
    fuzz("m-object.pkl", &legacy[start..end], count, |p| {
        let _ = read_inert(&std::fs::read(p).unwrap());
        Ok(())
    });

    let mut idx = idx_header(&[3, 2, 2]);
    idx.extend(0..12u8);
    let idx_reader = |p: &Path| read_idx(p).map(|_| ()).map_err(|e| e.to_string());
    fuzz("m-idx", &idx, count, idx_reader);
    fuzz("m-idx.gz", &gzip(&idx), count, idx_reader);

    let png = byol_tests::fixtures::png_bytes(3, 2, png::ColorType::Rgb, None, &[7; 18]);
    let image = |p: &Path| {
        decode_file(p, ColorMode::Rgb)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    fuzz("m.png", &png, count, image);

    let jpeg = dir.path().join("valid.jpg");
    byol_tests::fixtures::write_jpeg(&jpeg, 5, 4, [200, 30, 90]);
    fuzz("m.jpg", &std::fs::read(&jpeg).unwrap(), count, image);

    // Two CIFAR-10 records (label byte + 3072 pixels); the reader takes the directory.
    let mut cifar = Vec::new();
    for label in [3u8, 7] {
        cifar.push(label);
        cifar.extend((0..3072).map(|i| (i % 251) as u8));
    }
    fuzz("test_batch.bin", &cifar, count / 4, |p| {
        byol_core::data::cifar::Cifar::cifar10(p.parent().unwrap(), byol_core::data::Split::Test)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });

    // A config as byol-pretrain writes it: parse errors and out-of-range fields name the file.
    let toml = byol_core::config::TrainConfig::fashion_mnist()
        .to_toml()
        .unwrap();
    fuzz("m.toml", toml.as_bytes(), count, |p| {
        byol_core::config::TrainConfig::from_toml_file(p)
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
}

/// Rewrites the safetensors file at `path` with tensor `name` passed through `edit`.
fn edit_tensor(
    path: &Path,
    name: &str,
    edit: impl FnOnce(&candle_core::Tensor) -> candle_core::Tensor,
) {
    let file = SafetensorsFile::read(path, &Device::Cpu).unwrap();
    let mut tensors = file.tensors.clone();
    let edited = edit(&tensors[name]);
    tensors.insert(name.into(), edited);
    let meta: BTreeMap<String, String> = file.metadata.clone().into_iter().collect();
    write_safetensors(path, tensors.into_iter().collect(), meta).unwrap();
}

#[test]
fn weights_with_non_finite_or_integer_values_are_refused_naming_the_tensor() {
    use candle_core::DType;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("encoder.safetensors");
    let name = "layer1.0.conv1.weight";

    // A NaN (and an infinity) in one weight: today a chance-level report without a word.
    for bad in [f32::NAN, f32::INFINITY] {
        save_tiny_encoder(&path, 0);
        edit_tensor(&path, name, |t| {
            let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v[3] = bad;
            candle_core::Tensor::from_vec(v, t.dims(), &Device::Cpu).unwrap()
        });
        let message = load_encoder(&path, &Device::Cpu, None)
            .err()
            .expect("refused")
            .to_string();
        assert!(message.contains("encoder.safetensors"), "{message}");
        assert!(
            message.contains(name) && message.contains("non-finite"),
            "{message}"
        );
    }

    // Integers where weights belong: refused, not truncated.
    save_tiny_encoder(&path, 0);
    edit_tensor(&path, name, |t| t.to_dtype(DType::I64).unwrap());
    let message = load_encoder(&path, &Device::Cpu, None)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        message.contains(name) && message.contains("I64"),
        "{message}"
    );

    // Other float widths load, converted to f32 (the same values where exact).
    for dtype in [DType::F16, DType::BF16, DType::F64] {
        save_tiny_encoder(&path, 0);
        let original = SafetensorsFile::read(&path, &Device::Cpu).unwrap().tensors[name].clone();
        edit_tensor(&path, name, |t| t.to_dtype(dtype).unwrap());
        let loaded = load_encoder(&path, &Device::Cpu, None).expect("converted");
        let got = loaded.store.get(name).unwrap().var.as_tensor().clone();
        assert_eq!(got.dtype(), DType::F32);
        let expected = original
            .to_dtype(dtype)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let diff = (got - expected)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(diff, 0.0, "{dtype:?}");
    }
}

#[test]
fn pickle_bombs_inside_a_pytorch_zip_are_refused_before_candle_reads_them() {
    // candle's parser (the `.pth` path) copies memo values whole and recurses over nesting: the
    // same two bombs as above, as the `data.pkl` of a torch zip.
    let (memo_bomb, deep) = (pickle_memo_bomb(), pickle_nested_lists(1_000_000));
    let dir = tempfile::tempdir().unwrap();
    for (name, pickle, says) in [
        ("memo.pth", &memo_bomb, "memo bomb"),
        ("deep.pth", &deep, "nested deeper"),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, stored_zip(&[("archive/data.pkl", pickle)])).unwrap();
        let start = std::time::Instant::now();
        let message = byol_core::weights::read_weights(&path, &Device::Cpu)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            message.contains(name) && message.contains("data.pkl") && message.contains(says),
            "{message}"
        );
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
    }
    // A well-formed state dict still reads.
    let path = dir.path().join("ok.pth");
    std::fs::write(&path, pth([2, 3], &[0u8; 24])).unwrap();
    byol_core::weights::read_weights(&path, &Device::Cpu).expect("a valid .pth reads");
}
