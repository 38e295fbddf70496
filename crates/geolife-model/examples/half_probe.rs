use burn::tensor::{DType, Device, Distribution, FloatDType, Tensor};

fn probe(device: &Device, dt: FloatDType) {
    let ad = device.clone().autodiff();
    let x = Tensor::<4>::random([2, 3, 8, 8], Distribution::Normal(0.0, 1.0), &ad);
    let w = Tensor::<4>::random([4, 3, 3, 3], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let lw = Tensor::<2>::random([4, 5], Distribution::Normal(0.0, 1.0), &ad).require_grad();
    let xh = x.cast(dt);
    let y = burn::tensor::module::conv2d(
        xh,
        w.clone().cast(dt),
        None,
        burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    );
    let y = y.permute([0, 2, 3, 1]).reshape([-1, 4]);
    let z = y.matmul(lw.clone().cast(dt));
    let dwc = burn::tensor::module::conv2d(
        z.clone().reshape([2, 8, 8, 5]).permute([0, 3, 1, 2]),
        Tensor::<4>::random([5, 1, 3, 3], Distribution::Normal(0.0, 1.0), &ad).cast(dt),
        None,
        burn::tensor::ops::ConvOptions::new([1, 1], [1, 1], [1, 1], 5),
    );
    let loss = (z.cast(FloatDType::F32).powf_scalar(2.0).mean() + dwc.cast(FloatDType::F32).mean());
    println!(
        "loss dtype {:?} value {:?}",
        loss.dtype(),
        loss.clone().into_data().to_vec::<f32>()
    );
    let g = loss.backward();
    let gw = w.grad(&g).unwrap();
    println!(
        "{dt:?} grad w dtype {:?} sum {:?}",
        gw.dtype(),
        gw.sum().into_data().to_vec::<f32>()
    );
    let gl = lw.grad(&g).unwrap();
    println!("{dt:?} grad lw dtype {:?}", gl.dtype());
    let _ = DType::F32;
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or("flex".into());
    let device = if which == "wgpu" {
        #[cfg(feature = "wgpu")]
        {
            Device::wgpu(Default::default())
        }
        #[cfg(not(feature = "wgpu"))]
        {
            panic!("no wgpu")
        }
    } else {
        Device::flex()
    };
    for dt in [FloatDType::F16, FloatDType::BF16] {
        let r = std::panic::catch_unwind(|| probe(&device, dt));
        println!("{dt:?}: {}", if r.is_ok() { "ok" } else { "PANIC" });
    }
}
