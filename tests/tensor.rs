//! Tensors: dtypes, shapes, constructors, conversions, slicing.

use accelmesh::{DType, Error, Shape, Tensor, TensorData};
use half::{bf16, f16};

#[test]
fn dtype_parse_names_and_sizes() {
    assert_eq!(DType::parse("f32").unwrap(), DType::F32);
    assert_eq!(DType::parse(" BF16 ").unwrap(), DType::BF16);
    assert_eq!("f16".parse::<DType>().unwrap(), DType::F16);
    assert_eq!(DType::F32.size_bytes(), 4);
    assert_eq!(DType::F16.size_bytes(), 2);
    assert_eq!(DType::BF16.size_bytes(), 2);
    assert_eq!(DType::BF16.to_string(), "bf16");
    let err = DType::parse("f64").unwrap_err();
    assert!(matches!(err, Error::UnknownDType(ref s) if s == "f64"));
    assert!(err.to_string().contains("f64"), "{err}");
}

#[test]
fn dtype_conversions_round_trip_within_tolerance() {
    let t = Tensor::random([17, 33], DType::F32, 11).unwrap();
    let values = t.as_f32().unwrap().to_vec();
    // Relative rounding error: 2^-11 for f16 (values in [-1, 1), above f16's subnormals for
    // all but tiny values, hence the absolute floor), 2^-8 for bf16.
    for (dtype, rel, abs) in [
        (DType::F16, 1.0 / 2048.0, 1e-7),
        (DType::BF16, 1.0 / 256.0, 0.0),
    ] {
        let narrow = t.to_dtype(dtype);
        assert_eq!(narrow.dtype(), dtype);
        assert_eq!(narrow.shape(), t.shape());
        assert_eq!(narrow.size_bytes(), 17 * 33 * 2);
        let back = narrow.to_dtype(DType::F32);
        for (orig, got) in values.iter().zip(back.as_f32().unwrap()) {
            let err = (orig - got).abs();
            assert!(err <= orig.abs() * rel + abs, "{dtype}: {orig} -> {got}");
        }
        // Narrowing an already rounded tensor again changes nothing; widening is exact.
        assert_eq!(back.to_dtype(dtype), narrow);
        assert_eq!(narrow.to_f32_vec(), back.to_f32_vec());
    }
    // f16 <-> bf16 goes through f32.
    let h = t.to_dtype(DType::F16);
    let b = h.to_dtype(DType::BF16);
    let direct = t.to_dtype(DType::BF16);
    let max_diff = b
        .to_f32_vec()
        .iter()
        .zip(direct.to_f32_vec())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert!(max_diff <= 1.0 / 128.0, "{max_diff}");
}

#[test]
fn from_vec_checks_the_element_count_and_names_it() {
    let err = Tensor::from_vec([2, 3], vec![1.0f32; 5]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Shape { .. }));
    assert!(
        msg.contains("[2, 3]") && msg.contains('6') && msg.contains('5'),
        "{msg}"
    );
    let t = Tensor::from_vec([2, 3], vec![f16::from_f32(0.5); 6]).unwrap();
    assert_eq!(t.dtype(), DType::F16);
    assert_eq!(t.as_f16().unwrap().len(), 6);
    let err = t.as_f32().unwrap_err();
    assert!(matches!(err, Error::DType { .. }));
    assert!(err.to_string().contains("f16"), "{err}");
    let t = Tensor::from_vec([3], vec![bf16::from_f32(-2.0); 3]).unwrap();
    assert_eq!(t.to_f32_vec(), [-2.0; 3]);
}

#[test]
fn shape_overflow_is_an_error() {
    let shape = Shape::new([1 << 40, 1 << 40, 1 << 40]);
    assert!(matches!(shape.numel(), Err(Error::Overflow { .. })));
    let err = Tensor::zeros(shape, DType::F32).unwrap_err();
    assert!(err.to_string().contains("1099511627776"), "{err}");
    assert_eq!(Shape::new([2, 0, 5]).numel().unwrap(), 0);
    assert_eq!(Shape::new(Vec::new()).numel().unwrap(), 1);
}

#[test]
fn full_and_zeros() {
    let t = Tensor::full([4, 2], DType::BF16, 1.5).unwrap();
    assert_eq!(t.to_f32_vec(), [1.5; 8]);
    let z = Tensor::zeros([3], DType::F16).unwrap();
    assert_eq!(z.to_f32_vec(), [0.0; 3]);
}

#[test]
fn random_is_reproducible_per_seed_and_differs_across_seeds() {
    for dtype in DType::ALL {
        let a = Tensor::random([7, 9], dtype, 42).unwrap();
        let b = Tensor::random([7, 9], dtype, 42).unwrap();
        let c = Tensor::random([7, 9], dtype, 43).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let values = a.to_f32_vec();
        assert!(values.iter().all(|v| (-1.0..1.0).contains(v)));
        assert!(values.iter().any(|v| *v < -0.1) && values.iter().any(|v| *v > 0.1));
        let distinct = values
            .iter()
            .map(|v| v.to_bits())
            .collect::<std::collections::HashSet<_>>();
        assert!(
            distinct.len() > 40,
            "{dtype}: {} distinct values",
            distinct.len()
        );
    }
}

#[test]
fn reshape_checks_the_size() {
    let t = Tensor::random([6, 4], DType::F32, 1).unwrap();
    let values = t.to_f32_vec();
    let r = t.clone().reshape([2, 3, 4]).unwrap();
    assert_eq!(r.dims(), [2, 3, 4]);
    assert_eq!(r.to_f32_vec(), values);
    let err = t.reshape([5, 5]).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("[6, 4]") && msg.contains("[5, 5]"), "{msg}");
}

#[test]
fn narrow_and_concat_are_inverse() {
    let t = Tensor::random([3, 5, 4], DType::F16, 9).unwrap();
    for dim in 0..3 {
        let len = t.dims()[dim];
        let (a, b) = (
            t.narrow(dim, 0, len / 2).unwrap(),
            t.narrow(dim, len / 2, len - len / 2).unwrap(),
        );
        assert_eq!(Tensor::concat(&[&a, &b], dim).unwrap(), t);
    }
    let mid = t.narrow(1, 1, 2).unwrap();
    let all = t.to_f32_vec();
    let got = mid.to_f32_vec();
    for i in 0..3 {
        for j in 0..2 {
            for k in 0..4 {
                assert_eq!(got[(i * 2 + j) * 4 + k], all[(i * 5 + j + 1) * 4 + k]);
            }
        }
    }
    let err = t.narrow(1, 4, 2).unwrap_err();
    assert!(err.to_string().contains("4..4+2"), "{err}");
    assert!(t.narrow(3, 0, 1).is_err());
    let other = Tensor::random([3, 5, 4], DType::F32, 9).unwrap();
    assert!(matches!(
        Tensor::concat(&[&t, &other], 0),
        Err(Error::DType { .. })
    ));
    let wrong = Tensor::random([3, 6, 4], DType::F16, 9).unwrap();
    assert!(matches!(
        Tensor::concat(&[&t, &wrong], 0),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn data_reports_dtype_and_length() {
    let t = Tensor::random([5], DType::BF16, 2).unwrap();
    assert!(matches!(t.data(), TensorData::BF16(v) if v.len() == 5));
    assert_eq!(t.data().dtype(), DType::BF16);
    assert_eq!(t.numel(), 5);
    assert_eq!(t.rank(), 1);
}
