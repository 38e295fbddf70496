//! Throughput of the raw readers: PO and PA metadata CSV parsing on generated files of real
//! size, and per-file cube/patch reads on the real mini files.
//! Run: cargo run -p geolife-data --example readers_speed [--release] [PO_ROWS]

use std::path::PathBuf;
use std::time::Instant;

use geolife_data::Split;
use geolife_data::cubes::{LANDSAT_SHAPE, NanPolicy, read_cube};
use geolife_data::metadata::read_pa_metadata;
use geolife_data::patches::{read_nir, read_rgb};
use geolife_data::po::PoReader;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let po_rows: usize = std::env::args()
        .nth(1)
        .map_or(Ok(1_000_000), |s| s.parse())?;
    let dir = tempfile::tempdir()?;

    let po = dir.path().join("po.csv");
    let mut w = csv::Writer::from_path(&po)?;
    w.write_record(
        "publisher,year,month,day,lat,lon,geoUncertaintyInM,taxonRank,date,dayOfYear,surveyId,speciesId"
            .split(','),
    )?;
    for i in 0..po_rows {
        w.write_record([
            "iNaturalist".into(),
            "2019".into(),
            (1 + i % 12).to_string(),
            (1 + i % 28).to_string(),
            format!("{:.5}", 40.0 + (i % 1000) as f64 * 0.01),
            format!("{:.5}", 5.0 + (i % 777) as f64 * 0.01),
            format!("{}.0", i % 50),
            "SPECIES".into(),
            "2019-06-12".into(),
            "163".into(),
            (3_000_000 + i).to_string(),
            format!("{}.0", i % 9709),
        ])?;
    }
    w.flush()?;
    drop(w);
    let po_bytes = std::fs::metadata(&po)?.len();
    let t = Instant::now();
    let mut n = 0usize;
    for r in PoReader::open(&po, false)? {
        r?;
        n += 1;
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "PO reader: {n} rows ({:.0} MB) in {dt:.2} s = {:.2} M rows/s",
        po_bytes as f64 / 1e6,
        n as f64 / dt / 1e6
    );

    let rows = 1_483_637usize;
    let pa = dir.path().join("pa.csv");
    let mut w = csv::Writer::from_path(&pa)?;
    w.write_record(
        "lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId".split(','),
    )?;
    for i in 0..rows {
        let survey = i / 17;
        w.write_record([
            format!("{:.6}", 5.0 + (survey % 991) as f64 * 0.001),
            format!("{:.6}", 45.0 + (survey % 883) as f64 * 0.001),
            "2017".into(),
            "11.0".into(),
            if i % 29 == 0 { "inf" } else { "150.0" }.into(),
            "ATLANTIC".into(),
            "France".into(),
            format!("{}.0", (i * 7919) % 11255),
            survey.to_string(),
        ])?;
    }
    w.flush()?;
    drop(w);
    let t = Instant::now();
    let m = read_pa_metadata(&pa, Split::Train)?;
    let dt = t.elapsed().as_secs_f64();
    println!(
        "PA metadata: {} rows -> {} surveys in {dt:.2} s = {:.2} M rows/s",
        m.rows,
        m.surveys.len(),
        m.rows as f64 / dt / 1e6
    );

    let mini = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/glc24-real/mini");
    let cube = mini.join("TimeSeries-Cubes/TimeSeries-Cubes/GLC24-PA-train-landsat_time_series/GLC24-PA-train-landsat-time-series_1322301_cube.pt");
    let reps = 2000;
    let t = Instant::now();
    for _ in 0..reps {
        read_cube(&cube, None, &LANDSAT_SHAPE, NanPolicy::Zero)?;
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "Landsat .pt read: {:.0} files/s (one thread)",
        reps as f64 / dt
    );
    let rgb = mini.join("PA_Train_SatellitePatches_RGB/pa_train_patches_rgb/01/23/1322301.jpeg");
    let nir = mini.join("PA_Train_SatellitePatches_NIR/pa_train_patches_nir/01/23/1322301.jpeg");
    let t = Instant::now();
    for _ in 0..reps {
        read_rgb(&rgb, None)?;
        read_nir(&nir, None)?;
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "RGB+NIR JPEG decode: {:.0} pairs/s (one thread)",
        reps as f64 / dt
    );
    Ok(())
}
