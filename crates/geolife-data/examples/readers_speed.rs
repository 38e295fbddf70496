//! Throughput of the raw readers: PO and PA metadata CSV parsing on generated files of real
//! size, and per-file cube/patch reads on the real mini files.
//! Run: cargo run -p geolife-data --example readers_speed [--release] [PO_ROWS]

use std::fmt::Write as _;
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

    let mut s = String::from(
        "publisher,year,month,day,lat,lon,geoUncertaintyInM,taxonRank,date,dayOfYear,surveyId,speciesId\n",
    );
    for i in 0..po_rows {
        writeln!(
            s,
            "iNaturalist,2019,{},{},{:.5},{:.5},{}.0,SPECIES,2019-06-12,163,{},{}.0",
            1 + i % 12,
            1 + i % 28,
            40.0 + (i % 1000) as f64 * 0.01,
            5.0 + (i % 777) as f64 * 0.01,
            i % 50,
            3_000_000 + i,
            i % 9709
        )?;
    }
    let po = dir.path().join("po.csv");
    std::fs::write(&po, &s)?;
    let t = Instant::now();
    let mut n = 0usize;
    for r in PoReader::open(&po, false)? {
        r?;
        n += 1;
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "PO reader: {n} rows ({:.0} MB) in {dt:.2} s = {:.2} M rows/s",
        s.len() as f64 / 1e6,
        n as f64 / dt / 1e6
    );

    let rows = 1_483_637usize;
    let mut s =
        String::from("lon,lat,year,geoUncertaintyInM,areaInM2,region,country,speciesId,surveyId\n");
    for i in 0..rows {
        let survey = i / 17;
        writeln!(
            s,
            "{:.6},{:.6},2017,11.0,{},ATLANTIC,France,{}.0,{}",
            5.0 + (survey % 991) as f64 * 0.001,
            45.0 + (survey % 883) as f64 * 0.001,
            if i % 29 == 0 {
                "inf".to_string()
            } else {
                "150.0".into()
            },
            (i * 7919) % 11255,
            survey
        )?;
    }
    let pa = dir.path().join("pa.csv");
    std::fs::write(&pa, &s)?;
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
