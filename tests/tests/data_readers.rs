//! Layout fixtures for every reader, written in the real on-disk layouts, and the decoders.

use byol_core::data::cifar::{Cifar, Cifar100Labels};
use byol_core::data::decode::{decode_bytes, decode_file, ColorMode};
use byol_core::data::idx::{read_idx, IdxDataset, FASHION_MNIST_DIR};
use byol_core::data::image_folder::ImageFolder;
use byol_core::data::imagenet::{imagenet_train, imagenet_val};
use byol_core::data::voc::{read_mask, VocClassification, VocSegmentation, VocSource};
use byol_core::data::{Dataset, Split};
use byol_core::Error;
use std::fs;
use std::io::Write;
use std::path::Path;

use byol_tests::fixtures::{png_bytes, voc_fixture, write, write_jpeg, write_mini_imagenet};

type R = anyhow::Result<()>;

fn jpeg_bytes(w: u16, h: u16, data: &[u8], color: jpeg_encoder::ColorType) -> Vec<u8> {
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(data, w, h, color)
        .unwrap();
    out
}

fn close(a: &[u8], b: &[u8], tol: i32) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(&x, &y)| (x as i32 - y as i32).abs() <= tol)
}

#[test]
fn jpeg_rgb_grey_and_cmyk_decode() -> R {
    let p = Path::new("t.jpg");
    let rgb = jpeg_bytes(
        16,
        8,
        &[200u8, 40, 90].repeat(128),
        jpeg_encoder::ColorType::Rgb,
    );
    let img = decode_bytes(&rgb, p, ColorMode::Keep)?;
    assert_eq!((img.width, img.height, img.channels), (16, 8, 3));
    assert!(
        close(&img.data[..3], &[200, 40, 90], 3),
        "{:?}",
        &img.data[..3]
    );
    let grey = jpeg_bytes(8, 8, &[77u8; 64], jpeg_encoder::ColorType::Luma);
    let img = decode_bytes(&grey, p, ColorMode::Keep)?;
    assert_eq!(img.channels, 1);
    assert!(close(&img.data, &[77; 64], 1));
    let img = decode_bytes(&grey, p, ColorMode::Rgb)?;
    assert_eq!(img.channels, 3);
    assert!(close(&img.data, &[77; 192], 1));
    // Pure cyan in CMYK (Adobe-inverted on disk) is RGB (0, 255, 255).
    let cmyk = jpeg_bytes(
        8,
        8,
        &[255u8, 0, 0, 0].repeat(64),
        jpeg_encoder::ColorType::Cmyk,
    );
    let img = decode_bytes(&cmyk, p, ColorMode::Keep)?;
    assert_eq!(img.channels, 3);
    assert!(
        close(&img.data[..3], &[0, 255, 255], 3),
        "{:?}",
        &img.data[..3]
    );
    let img = decode_bytes(&rgb, p, ColorMode::Grey)?;
    assert_eq!(img.channels, 1);
    assert!(close(
        &img.data[..1],
        &[((200 * 299 + 40 * 587 + 90 * 114) / 1000) as u8],
        3
    ));
    Ok(())
}

#[test]
fn format_is_sniffed_not_taken_from_the_name() -> R {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("really_a_png.JPEG");
    write(
        &path,
        &png_bytes(2, 1, png::ColorType::Rgb, None, &[1, 2, 3, 4, 5, 6]),
    );
    assert_eq!(
        decode_file(&path, ColorMode::Rgb)?.data,
        vec![1, 2, 3, 4, 5, 6]
    );
    let truncated = jpeg_bytes(16, 16, &[9u8; 768], jpeg_encoder::ColorType::Rgb);
    let path = dir.path().join("cut.jpg");
    write(&path, &truncated[..truncated.len() - 10]);
    let err = decode_file(&path, ColorMode::Rgb).unwrap_err();
    assert!(
        matches!(err, Error::Format { .. }) && err.to_string().contains("cut.jpg"),
        "{err}"
    );
    Ok(())
}

#[test]
fn image_folder_sorted_classes_and_files() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    write_jpeg(&root.join("zebra/b.jpg"), 4, 4, [255, 255, 255]);
    write_jpeg(&root.join("zebra/a.JPEG"), 4, 4, [0, 0, 0]);
    write(
        &root.join("apple/x.png"),
        &png_bytes(3, 2, png::ColorType::Grayscale, None, &[5; 6]),
    );
    write(&root.join("apple/notes.txt"), b"not an image");
    write(&root.join("apple/.hidden.jpg"), b"junk");
    let ds = ImageFolder::open(root)?;
    assert_eq!(ds.class_names(), ["apple", "zebra"]);
    assert_eq!(ds.len(), 3);
    let names: Vec<_> = (0..3)
        .map(|i| {
            ds.path(i)
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(names, ["x.png", "a.JPEG", "b.jpg"]);
    let s = ds.get(0)?;
    assert_eq!(
        (s.label, s.image.width, s.image.height, s.image.channels),
        (0, 3, 2, 3)
    );
    assert_eq!(ds.get(1)?.label, 1);
    assert!(ds.get(2)?.image.data[0] > 250);
    assert!(matches!(ds.get(3), Err(Error::Input(_))));
    let missing = root.join("nope");
    let err = ImageFolder::open(&missing).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    Ok(())
}

fn imagenet_fixture(root: &Path) {
    write_mini_imagenet(root, &["n01440764", "n01443537", "n01484850"], 2, 0, 8);
    for k in 1..=3 {
        write_jpeg(
            &root.join(format!("val/ILSVRC2012_val_0000000{k}.JPEG")),
            8,
            8,
            [9; 3],
        );
    }
}

#[test]
fn imagenet_train_and_flat_val_with_both_label_files() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    imagenet_fixture(root);
    let train = imagenet_train(root)?;
    assert_eq!(train.len(), 6);
    assert_eq!(train.class_names()[2], "n01484850");
    assert_eq!(train.label(5), Some(2));

    let txt = root.join("val_labels.txt");
    write(&txt, b"ILSVRC2012_val_00000001.JPEG 2\nILSVRC2012_val_00000002.JPEG 0\n\nILSVRC2012_val_00000003.JPEG 1\n");
    let val = imagenet_val(root, Some(&txt))?;
    assert_eq!(
        (0..3).map(|i| val.label(i).unwrap()).collect::<Vec<_>>(),
        [2, 0, 1]
    );
    assert_eq!(val.get(0)?.label, 2);

    let csv = root.join("LOC_val_solution.csv");
    write(&csv, b"ImageId,PredictionString\nILSVRC2012_val_00000003,n01443537 1 2 3 4 n01443537 5 6 7 8\nILSVRC2012_val_00000001,n01484850 1 2 3 4\n");
    let val = imagenet_val(root, Some(&csv))?;
    assert_eq!(val.len(), 2);
    assert_eq!((val.label(0), val.label(1)), (Some(1), Some(2)));
    assert!(val
        .path(0)
        .unwrap()
        .ends_with("val/ILSVRC2012_val_00000003.JPEG"));
    Ok(())
}

#[test]
fn imagenet_malformed_label_files_name_path_and_line() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    imagenet_fixture(root);
    let cases: [(&str, &[u8], &str); 4] = [
        (
            "a.txt",
            b"ILSVRC2012_val_00000001.JPEG 0\nILSVRC2012_val_00000002.JPEG x\n",
            "line 2",
        ),
        (
            "b.txt",
            b"ILSVRC2012_val_00000001.JPEG 0\n\nILSVRC2012_val_00000002.JPEG 7\n",
            "line 3",
        ),
        ("c.txt", b"only_one_field\n", "line 1"),
        (
            "d.csv",
            b"ImageId,PredictionString\nILSVRC2012_val_00000001,n99999999 1 2 3 4\n",
            "line 2",
        ),
    ];
    for (name, text, line) in cases {
        let path = root.join(name);
        write(&path, text);
        let err = imagenet_val(root, Some(&path)).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(line), "{name}: {err}");
    }
    // A missing image named by the labels file is caught at open.
    let path = root.join("e.txt");
    write(&path, b"ILSVRC2012_val_00000009.JPEG 0\n");
    let err = imagenet_val(root, Some(&path)).unwrap_err().to_string();
    assert!(err.contains("line 1") && err.contains("00000009"), "{err}");
    Ok(())
}

#[test]
fn imagenet_val_as_class_folders() -> R {
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    imagenet_fixture(root);
    for wnid in ["n01440764", "n01443537", "n01484850"] {
        write_jpeg(&root.join(format!("valf/val/{wnid}/x.JPEG")), 8, 8, [1; 3]);
        fs::create_dir_all(root.join(format!("valf/train/{wnid}")))?;
    }
    write_jpeg(&root.join("valf/train/n01440764/t.JPEG"), 8, 8, [1; 3]);
    let val = imagenet_val(root.join("valf"), None)?;
    assert_eq!(val.len(), 3);
    assert_eq!(val.label(2), Some(2));
    // A flat val/ with no labels file has no class folders.
    assert!(imagenet_val(root, None).is_err());
    Ok(())
}

fn cifar_record(labels: &[u8], seed: u8) -> Vec<u8> {
    let mut rec = labels.to_vec();
    // Channel planes R, G, B: pixel i of plane c holds seed + c.
    for c in 0..3u8 {
        rec.extend(std::iter::repeat_n(seed.wrapping_add(c), 1024));
    }
    rec
}

#[test]
fn cifar10_and_cifar100_records() -> R {
    let dir = tempfile::tempdir()?;
    let c10 = dir.path().join("cifar-10-batches-bin");
    for b in 1..=5u8 {
        let mut bytes = cifar_record(&[b], 10 * b);
        bytes.extend(cifar_record(&[9], 0));
        write(&c10.join(format!("data_batch_{b}.bin")), &bytes);
    }
    write(&c10.join("test_batch.bin"), &cifar_record(&[3], 7));
    let train = Cifar::cifar10(&c10, Split::Train)?;
    assert_eq!((train.len(), train.num_classes()), (10, 10));
    let s = train.get(2)?;
    assert_eq!(s.label, 2);
    assert_eq!(&s.image.data[..6], &[20, 21, 22, 20, 21, 22]);
    assert_eq!(train.class_names()[0], "airplane");
    let test = Cifar::cifar10(&c10, Split::Test)?;
    assert_eq!((test.len(), test.get(0)?.label), (1, 3));

    let c100 = dir.path().join("cifar-100-binary");
    let mut bytes = cifar_record(&[4, 77], 1);
    bytes.extend(cifar_record(&[19, 99], 2));
    write(&c100.join("train.bin"), &bytes);
    let fine = Cifar::cifar100(&c100, Split::Train, Cifar100Labels::Fine)?;
    let coarse = Cifar::cifar100(&c100, Split::Train, Cifar100Labels::Coarse)?;
    assert_eq!((fine.num_classes(), coarse.num_classes()), (100, 20));
    assert_eq!((fine.get(0)?.label, fine.get(1)?.label), (77, 99));
    assert_eq!((coarse.get(0)?.label, coarse.get(1)?.label), (4, 19));

    // A short file and an out-of-range label name the file.
    write(&c100.join("test.bin"), &bytes[..bytes.len() - 1]);
    let err = Cifar::cifar100(&c100, Split::Test, Cifar100Labels::Fine).unwrap_err();
    assert!(err.to_string().contains("test.bin"), "{err}");
    write(&c100.join("test.bin"), &cifar_record(&[20, 0], 1));
    let err = Cifar::cifar100(&c100, Split::Test, Cifar100Labels::Coarse).unwrap_err();
    assert!(err.to_string().contains("record 0"), "{err}");
    Ok(())
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        out.extend(d.to_be_bytes());
    }
    out.extend(data);
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

#[test]
fn idx_plain_and_gzipped() -> R {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let pixels: Vec<u8> = (0..2 * 3 * 2).collect();
    // Train gzipped, test plain: both spellings are found.
    write(
        &d.join("train-images-idx3-ubyte.gz"),
        &gz(&idx(&[2, 3, 2], &pixels)),
    );
    write(
        &d.join("train-labels-idx1-ubyte.gz"),
        &gz(&idx(&[2], &[7, 1])),
    );
    write(
        &d.join("t10k-images-idx3-ubyte"),
        &idx(&[1, 3, 2], &pixels[..6]),
    );
    write(&d.join("t10k-labels-idx1-ubyte"), &idx(&[1], &[4]));
    let train = IdxDataset::mnist(d, Split::Train)?;
    let s = train.get(1)?;
    assert_eq!(
        (s.label, s.image.width, s.image.height, s.image.channels),
        (1, 2, 3, 1)
    );
    assert_eq!(s.image.data, (6..12).collect::<Vec<u8>>());
    let test = IdxDataset::fashion_mnist(d, Split::Test)?;
    assert_eq!((test.len(), test.class_names()[4].as_str()), (1, "Coat"));

    write(&d.join("bad"), &idx(&[3, 2], &[0; 5]));
    let err = read_idx(&d.join("bad")).unwrap_err().to_string();
    assert!(err.contains("bad") && err.contains("[3, 2]"), "{err}");
    write(&d.join("t10k-labels-idx1-ubyte"), &idx(&[1], &[10]));
    assert!(IdxDataset::mnist(d, Split::Test).is_err());
    Ok(())
}

#[test]
fn real_fashion_mnist_when_installed() -> R {
    let dir = Path::new(FASHION_MNIST_DIR);
    if !dir.join("train-labels-idx1-ubyte.gz").is_file() {
        eprintln!("skipped: Fashion-MNIST not installed at {FASHION_MNIST_DIR}");
        return Ok(());
    }
    let train = IdxDataset::fashion_mnist(dir, Split::Train)?;
    let test = IdxDataset::fashion_mnist(dir, Split::Test)?;
    assert_eq!((train.len(), test.len()), (60000, 10000));
    let mut counts = [0usize; 10];
    for i in 0..test.len() {
        counts[test.label(i).unwrap()] += 1;
    }
    // The test set is balanced: 1000 per class.
    assert_eq!(counts, [1000; 10]);
    let s = train.get(59999)?;
    assert_eq!(
        (s.image.width, s.image.height, s.image.channels),
        (28, 28, 1)
    );
    assert!(s.label < 10);
    Ok(())
}

#[test]
fn voc_targets_from_image_sets_and_xml_agree() -> R {
    let dir = tempfile::tempdir()?;
    let voc = dir.path().join("VOCdevkit/VOC2007");
    voc_fixture(&voc);
    let (cat, dog, person) = (7, 11, 14);
    for source in [VocSource::ImageSets, VocSource::Annotations] {
        let ds = VocClassification::open(&voc, "trainval", source)?;
        assert_eq!((ds.len(), ds.num_classes()), (2, 20));
        let t0 = ds.targets(0).unwrap();
        let t1 = ds.targets(1).unwrap();
        assert_eq!(
            (t0[cat], t0[dog], t0[person], t0[0]),
            (1, -1, 0, -1),
            "{source:?}"
        );
        assert_eq!((t1[cat], t1[dog], t1[person]), (0, 1, -1), "{source:?}");
        assert_eq!(ds.get(1)?.label, dog);
        assert!(ds.get(1)?.image.data[0] > 190);
    }
    Ok(())
}

#[test]
fn voc_malformed_target_file_names_path_and_line() -> R {
    let dir = tempfile::tempdir()?;
    let voc = dir.path().join("VOC2012");
    voc_fixture(&voc);
    write(
        &voc.join("ImageSets/Main/dog_trainval.txt"),
        b"000001 -1\n000002 2\n",
    );
    let err = VocClassification::open(&voc, "trainval", VocSource::ImageSets).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("dog_trainval.txt") && msg.contains("line 2"),
        "{msg}"
    );
    write(
        &voc.join("Annotations/000002.xml"),
        b"<annotation>\n<object><name>unicorn</name></object></annotation>",
    );
    let msg = VocClassification::open(&voc, "trainval", VocSource::Annotations)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("000002.xml") && msg.contains("line 2") && msg.contains("unicorn"),
        "{msg}"
    );
    let msg = VocClassification::open(&voc, "nosplit", VocSource::ImageSets)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("aeroplane_nosplit.txt"), "{msg}");
    Ok(())
}

#[test]
fn voc_segmentation_masks_are_palette_indices() -> R {
    let dir = tempfile::tempdir()?;
    let voc = dir.path().join("VOC2012");
    voc_fixture(&voc);
    let seg = VocSegmentation::open(&voc, "val")?;
    assert_eq!(seg.len(), 2);
    let s = seg.get(0)?;
    assert_eq!((s.mask.width, s.mask.height, s.mask.channels), (4, 3, 1));
    assert_eq!(s.mask.data, [0, 1, 1, 255, 0, 2, 2, 255, 0, 0, 0, 0]);
    assert_eq!((s.image.width, s.image.height), (4, 3));
    // Sample 2's mask is 3x3 for a 4x3 image.
    let msg = seg.get(1).unwrap_err().to_string();
    assert!(msg.contains("000002.png") && msg.contains("3x3"), "{msg}");
    // An RGB PNG is not a mask.
    let rgb = voc.join("rgb.png");
    write(
        &rgb,
        &png_bytes(1, 1, png::ColorType::Rgb, None, &[1, 2, 3]),
    );
    assert!(read_mask(&rgb).unwrap_err().to_string().contains("rgb.png"));
    Ok(())
}

/// Decode speed on 500x375 JPEGs (ImageNet's typical size). Run with
/// `cargo test -p byol-tests --test data_readers -- --ignored --nocapture decode_speed`.
#[test]
#[ignore]
fn decode_speed() -> R {
    let (w, h) = (500u16, 375u16);
    // A photo-like texture: smooth gradients plus deterministic noise.
    let mut state = 12345u32;
    let data: Vec<u8> = (0..h as u32)
        .flat_map(|y| (0..w as u32).map(move |x| (x, y)))
        .flat_map(|(x, y)| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = state >> 28;
            [
                (x / 2 + n) as u8,
                (y / 2 + 2 * n) as u8,
                ((x + y) / 4 + n) as u8,
            ]
        })
        .collect();
    // BYOL_BENCH_JPEG=<file> measures a real photo instead.
    let jpeg = match std::env::var_os("BYOL_BENCH_JPEG") {
        Some(path) => fs::read(path)?,
        None => jpeg_bytes(w, h, &data, jpeg_encoder::ColorType::Rgb),
    };
    let n = 300;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let img = decode_bytes(&jpeg, Path::new("bench.jpg"), ColorMode::Rgb)?;
        assert!(img.width > 0 && img.channels == 3);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "decode {}x{} JPEG ({} KB): {:.0} images/s on one thread",
        decode_bytes(&jpeg, Path::new("bench.jpg"), ColorMode::Rgb)?.width,
        decode_bytes(&jpeg, Path::new("bench.jpg"), ColorMode::Rgb)?.height,
        jpeg.len() / 1024,
        n as f64 / secs
    );
    Ok(())
}

#[test]
fn loader_skips_corrupt_files_or_stops_on_them() -> R {
    use byol_core::data::loader::{Loader, LoaderConfig, SampleCtx, Transform};
    use byol_core::data::{CorruptPolicy, Sample};
    use std::sync::Arc;
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    for i in 0..4u8 {
        write_jpeg(&root.join(format!("a/{i}.jpg")), 2, 2, [i * 60; 3]);
    }
    write(&root.join("a/garbage.jpg"), b"this is not an image");
    let good = jpeg_bytes(8, 8, &[50u8; 192], jpeg_encoder::ColorType::Rgb);
    write(&root.join("a/truncated.jpg"), &good[..good.len() / 2]);
    let ds = Arc::new(ImageFolder::open(root)?);
    assert_eq!(ds.len(), 6);
    let first_pixel: Arc<dyn Transform> = Arc::new(
        |s: &Sample, _: &SampleCtx, v: &mut [&mut [f32]]| -> byol_core::Result<()> {
            v[0].fill(f32::from(s.image.data[0]));
            Ok(())
        },
    );
    let cfg = LoaderConfig {
        shuffle: false,
        drop_last: false,
        workers: 2,
        ..LoaderConfig::new(4, 1, 1)
    };
    let loader = Loader::new(ds.clone(), first_pixel.clone(), cfg.clone())?;
    let mut seen = Vec::new();
    for batch in loader.epoch(0)? {
        seen.extend(batch?.indices().to_vec());
    }
    // Sorted files: 0 1 2 3 garbage truncated.
    assert_eq!(seen, [0, 1, 2, 3]);
    assert_eq!(loader.skipped(), 2);
    let strict = LoaderConfig {
        on_corrupt: CorruptPolicy::Error,
        batch_size: 8,
        ..cfg
    };
    let loader = Loader::new(ds, first_pixel, strict)?;
    let err = loader.epoch(0)?.find_map(|b| b.err()).unwrap();
    assert!(err.to_string().contains("garbage.jpg"), "{err}");
    Ok(())
}
