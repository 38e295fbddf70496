//! `geolife import-weights` end to end: a PyTorch Lightning checkpoint is unwrapped (weights
//! under `state_dict`, keys prefixed `model.`) and imports exactly as the plain state dict
//! written by PyTorch does; keys the model does not have are refused unless allowed.
#![cfg(feature = "dl")]

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Output;

fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The smoke ConvNeXt state dict saved by PyTorch (`torch.save`), shared with the model tests.
fn torch_weights() -> PathBuf {
    fixture("../geolife-model/tests/fixtures/cnn/convnext_smoke_weights.pth")
}

/// `geolife import-weights --backbone smoke_convnext --input INPUT --output OUTPUT EXTRA...`.
fn import_smoke(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "import-weights",
        "--backbone",
        "smoke_convnext",
        "--input",
        s(input),
        "--output",
        s(output),
    ];
    args.extend_from_slice(extra);
    geolife(&args)
}

/// A 4-channel smoke ConvNeXt backbone import.
fn import(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["--target", "backbone", "--in-channels", "4"];
    args.extend_from_slice(extra);
    import_smoke(input, output, &args)
}

#[test]
fn lightning_checkpoint_imports_like_the_plain_state_dict() {
    let dir = tempfile::tempdir().unwrap();
    let from_ckpt = dir.path().join("ckpt.safetensors");
    let from_pth = dir.path().join("pth.safetensors");
    let out = import(
        &fixture("tests/fixtures/lightning_smoke_convnext.ckpt"),
        &from_ckpt,
        &[],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What was stripped is reported, and every parameter came from the file.
    assert!(stdout.contains("`state_dict.model.`"), "{stdout}");
    assert!(stdout.contains("missing 0, unexpected 0"), "{stdout}");
    let out = import(&torch_weights(), &from_pth, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Same tensors, same metadata.
    let (a, b) = (
        std::fs::read(&from_ckpt).unwrap(),
        std::fs::read(&from_pth).unwrap(),
    );
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&a).unwrap(),
        safetensors::SafeTensors::deserialize(&b).unwrap(),
    );
    let (mut ta, mut tb) = (a.tensors(), b.tensors());
    ta.sort_by(|x, y| x.0.cmp(&y.0));
    tb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(ta.len(), 56, "the smoke ConvNeXt's 56 weights");
    assert_eq!(ta, tb);
    let meta = |b: &[u8]| {
        safetensors::SafeTensors::read_metadata(b)
            .unwrap()
            .1
            .metadata()
            .clone()
    };
    assert_eq!(
        meta(&std::fs::read(&from_ckpt).unwrap()),
        meta(&std::fs::read(&from_pth).unwrap())
    );
}

#[test]
fn unexpected_keys_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // The PyTorch weights plus a block the smoke ConvNeXt (one block per stage) does not have:
    // a file from a deeper backbone than `--backbone`.
    let bytes = std::fs::read(fixture(
        "../geolife-model/tests/fixtures/cnn/convnext_smoke_weights.safetensors",
    ))
    .unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let extra = views
        .iter()
        .find(|(k, _)| k == "features.1.0.block.0.weight")
        .map(|(_, v)| v.clone())
        .expect("fixture has stage 1 block 0");
    views.push(("features.1.1.block.0.weight".into(), extra));
    let deeper = dir.path().join("deeper.safetensors");
    std::fs::write(&deeper, safetensors::serialize(views, &None).unwrap()).unwrap();

    let output = dir.path().join("out.safetensors");
    let out = import(&deeper, &output, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("unexpected features.1.1.block.0.weight"),
        "{stderr}"
    );
    assert!(stderr.contains("1 unexpected key(s)"), "{stderr}");
    assert!(
        !output.exists(),
        "nothing may be written on a refused import"
    );

    let out = import(&deeper, &output, &["--allow-unexpected"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(output.is_file());
}

/// The seed's 46 tabular features in the official GLC24 files' order, written out by hand from
/// GLC24.md and public GLC24 code that lists the human-footprint header (not from geolife).
const OFFICIAL: [&str; 46] = [
    "Bio1",
    "Bio2",
    "Bio3",
    "Bio4",
    "Bio5",
    "Bio6",
    "Bio7",
    "Bio8",
    "Bio9",
    "Bio10",
    "Bio11",
    "Bio12",
    "Bio13",
    "Bio14",
    "Bio15",
    "Bio16",
    "Bio17",
    "Bio18",
    "Bio19",
    "Elevation",
    "HumanFootprint-Built1994",
    "HumanFootprint-Built2009",
    "HumanFootprint-croplands1992",
    "HumanFootprint-croplands2005",
    "HumanFootprint-Lights1994",
    "HumanFootprint-Lights2009",
    "HumanFootprint-NavWater1994",
    "HumanFootprint-NavWater2009",
    "HumanFootprint-Pasture1993",
    "HumanFootprint-Pasture2009",
    "HumanFootprint-Popdensity1990",
    "HumanFootprint-Popdensity2010",
    "HumanFootprint-Railways",
    "HumanFootprint-Roads",
    "HumanFootprint-HFP1993",
    "HumanFootprint-HFP2009",
    "Soilgrid-bdod",
    "Soilgrid-cec",
    "Soilgrid-cfvo",
    "Soilgrid-clay",
    "Soilgrid-nitrogen",
    "Soilgrid-phh2o",
    "Soilgrid-sand",
    "Soilgrid-silt",
    "Soilgrid-soc",
    "LandCover",
];

/// A fusion state dict with no geolife metadata, as a PyTorch export of the seed's model is.
fn plain_fusion(path: &Path, num_features: usize) {
    use geolife_model::backbones::BackboneKind;
    use geolife_model::fusion::FusionConfig;
    let fc = FusionConfig::new(20, BackboneKind::SmokeConvnext).with_num_features(num_features);
    let model = fc.init(&geolife_model::cpu_device());
    geolife_model::checkpoint::save_module(&model, Default::default(), path).unwrap();
}

/// The tabular names an imported checkpoint records.
fn recorded_features(path: &Path) -> Option<Vec<String>> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let json = meta.metadata().as_ref()?.get("geolife_features")?.clone();
    Some(serde_json::from_str(&json).unwrap())
}

/// A dataset root holding only the train metadata header and the seed-parity fixture's five
/// environmental CSVs, whose human-footprint and SoilGrids headers are not alphabetical.
fn header_only_root(root: &Path) -> Vec<String> {
    let env = fixture("../geolife-train/tests/fixtures/seed_parity");
    let mut names = Vec::new();
    for entry in walkdir::WalkDir::new(&env).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "csv") {
            continue;
        }
        let rel = entry.path().strip_prefix(&env).unwrap();
        let to = root.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(entry.path(), &to).unwrap();
    }
    // The seed's merge order, each file's header order.
    for rel in [
        "Climate/Average 1981-2010/GLC24-PA-train-bioclimatic.csv",
        "Elevation/GLC24-PA-train-elevation.csv",
        "Human Footprint/GLC24-PA-train-human_footprint.csv",
        "SoilGrids/GLC24-PA-train-soilgrids.csv",
        "LandCover/GLC24-PA-train-landcover.csv",
    ] {
        let path = root
            .join("EnvironmentalRasters/EnvironmentalRasters")
            .join(rel);
        let text = std::fs::read_to_string(path).unwrap();
        let header = text.lines().next().unwrap();
        names.extend(
            header
                .split(',')
                .filter(|c| *c != "surveyId")
                .map(str::to_string),
        );
    }
    std::fs::write(
        root.join("GLC24_PA_metadata_train.csv"),
        "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId\n",
    )
    .unwrap();
    names
}

#[test]
fn imported_seed_models_record_their_tabular_feature_order() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("seed.safetensors");
    plain_fusion(&plain, 46);
    // No flag: the official files' order.
    let official = dir.path().join("official.safetensors");
    let out = import_smoke(&plain, &official, &[]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("official GLC24 files' column order"),
        "{stdout}"
    );
    assert_eq!(recorded_features(&official).unwrap(), OFFICIAL.to_vec());

    // --features-from DATASET: the train CSVs' headers, file after file (the seed's rule).
    let root = dir.path().join("data");
    let headers = header_only_root(&root);
    assert_ne!(
        headers,
        OFFICIAL.to_vec(),
        "the fixture's SoilGrids header is shuffled"
    );
    let from_data = dir.path().join("from_data.safetensors");
    let out = import_smoke(&plain, &from_data, &["--features-from", s(&root)]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(recorded_features(&from_data).unwrap(), headers);
    // A geolife checkpoint re-imported keeps what it records.
    let again = dir.path().join("again.safetensors");
    let out = import_smoke(&from_data, &again, &[]);
    assert!(out.status.success(), "{}", text(&out).1);
    assert_eq!(recorded_features(&again).unwrap(), headers);

    // A model whose tabular width is not the seed's: no order is guessed.
    let wide = dir.path().join("wide.safetensors");
    plain_fusion(&wide, 47);
    let refused = dir.path().join("refused.safetensors");
    let refuse = |extra: &[&str]| {
        let out = import_smoke(&wide, &refused, extra);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
        assert!(
            !refused.exists(),
            "nothing is written when the order is unknown"
        );
        stderr
    };
    let stderr = refuse(&[]);
    assert!(
        stderr.contains("47 tabular features") && stderr.contains("--features-from"),
        "{stderr}"
    );
    let stderr = refuse(&["--features-from", s(&root)]);
    assert!(
        stderr.contains("gives 46 tabular features") && stderr.contains("takes 47"),
        "{stderr}"
    );
}
