//! Learning rate as a pure function of the optimiser step, so resuming needs only the step.

use crate::config::{ScheduleKind, ScheduleSection};

/// Learning rate at optimiser step `step` (0-based) of `total` steps.
/// Cosine: linear warm-up to `base` over `warmup_steps`, then a half cosine down to
/// `base * min_lr_ratio` at the last step. Constant: `base` (after the warm-up, if any).
pub fn lr_at(s: &ScheduleSection, base: f64, step: usize, total: usize) -> f64 {
    if step < s.warmup_steps {
        return base * (step + 1) as f64 / s.warmup_steps as f64;
    }
    match s.kind {
        ScheduleKind::Constant => base,
        ScheduleKind::Cosine => {
            let span = total.saturating_sub(s.warmup_steps).max(1);
            let progress = ((step - s.warmup_steps) as f64 / span as f64).min(1.0);
            let min = base * s.min_lr_ratio;
            min + (base - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_with_warmup_hand_values() {
        let s = ScheduleSection {
            kind: ScheduleKind::Cosine,
            warmup_steps: 4,
            min_lr_ratio: 0.0,
        };
        assert!((lr_at(&s, 1.0, 0, 104) - 0.25).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 3, 104) - 1.0).abs() < 1e-12);
        assert!((lr_at(&s, 1.0, 4, 104) - 1.0).abs() < 1e-12);
        // Half way through the cosine: 0.5.
        assert!((lr_at(&s, 1.0, 54, 104) - 0.5).abs() < 1e-12);
        assert!(lr_at(&s, 1.0, 104, 104).abs() < 1e-12);
    }

    #[test]
    fn constant_is_constant() {
        let s = ScheduleSection::default();
        assert_eq!(lr_at(&s, 8e-4, 0, 10), 8e-4);
        assert_eq!(lr_at(&s, 8e-4, 9, 10), 8e-4);
    }
}
