//! The presence-only streaming reader: columns by name, float-formatted ids, empty optional
//! fields, bad rows as errors or counted skips, and per-survey species sets.

use geolife_data::DataError;
use geolife_data::po::{PoReader, po_labels};

const HEADER: &str = "publisher,year,month,day,lat,lon,geoUncertaintyInM,taxonRank,date,dayOfYear,surveyId,speciesId\n";

#[test]
fn records_parse_by_column_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("po.csv");
    std::fs::write(
        &p,
        format!(
            "{HEADER}iNaturalist,2019,6,12,45.5,5.25,10.0,SPECIES,2019-06-12,163,5,1234.0\n\
             \"Pl@ntNet, SAS\",2020,,,46.0,6.0,,SPECIES,,,7,99\n\
             x,2018,1,1,47.0,7.0,1,SPECIES,2018-01-01,1,5,1234.0\n\
             x,2018,1,1,47.0,7.0,1,SPECIES,2018-01-01,1,5,17\n"
        ),
    )
    .unwrap();
    let recs: Vec<_> = PoReader::open(&p, false)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(recs.len(), 4);
    assert_eq!((recs[0].survey_id, recs[0].species_id), (5, 1234));
    assert_eq!((recs[0].lon, recs[0].lat), (5.25, 45.5));
    assert_eq!(
        (
            recs[0].year,
            recs[0].month,
            recs[0].day,
            recs[0].day_of_year
        ),
        (Some(2019), Some(6), Some(12), Some(163))
    );
    assert_eq!(recs[0].geo_uncertainty_m, Some(10.0));
    assert_eq!(
        (recs[1].month, recs[1].day, recs[1].geo_uncertainty_m),
        (None, None, None)
    );
    let (ids, labels, skipped) = po_labels(&p, false).unwrap();
    assert_eq!(ids, vec![5, 7]);
    assert_eq!(labels, vec![vec![17, 1234], vec![99]]);
    assert_eq!(skipped, 0);
}

#[test]
fn bad_rows_error_or_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("po.csv");
    std::fs::write(
        &p,
        format!("{HEADER}a,2019,6,12,45.5,5.25,,S,,163,5,12\na,2019,13,12,45.5,5.25,,S,,163,6,12\na,2019,6,12,north,5.25,,S,,163,8,12\na,2019,6,12,45.5,5.25,,S,,163,9,12.5\na,2019,6,12,45.5,5.25,,S,,163,10,13\n"),
    )
    .unwrap();
    let mut r = PoReader::open(&p, false).unwrap();
    assert!(r.next().unwrap().is_ok());
    match r.next().unwrap() {
        Err(e @ DataError::Csv { .. }) => {
            let s = e.to_string();
            assert!(
                s.contains("month") && s.contains("survey 6") && s.contains(":3"),
                "{s}"
            );
        }
        other => panic!("expected Csv, got {other:?}"),
    }
    assert!(r.next().is_none(), "iteration stops after an error");

    let mut r = PoReader::open(&p, true).unwrap();
    let ok: Vec<u64> = r.by_ref().map(|x| x.unwrap().survey_id).collect();
    assert_eq!(ok, vec![5, 10]);
    assert_eq!(r.skipped(), 3);
    assert!(matches!(r.first_error(), Some(DataError::Csv { .. })));

    let p = dir.path().join("no_species.csv");
    std::fs::write(&p, "surveyId,lon,lat,year\n1,2,3,2000\n").unwrap();
    assert!(matches!(
        PoReader::open(&p, false),
        Err(DataError::MissingColumn { .. })
    ));
}
