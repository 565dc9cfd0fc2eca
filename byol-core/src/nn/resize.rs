//! Bilinear resizing of `[N, C, H, W]` maps as PyTorch's `F.interpolate(mode="bilinear",
//! align_corners=False)`, written as two small matrix products so it differentiates on every
//! device (candle's `upsample_bilinear2d` has no backward pass).

use candle_core::{Device, Tensor};

use crate::Result;

/// `[out, inp]` matrix of PyTorch's bilinear interpolation (`align_corners=False`) along one axis.
fn bilinear_matrix(out: usize, inp: usize, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; out * inp];
    let scale = inp as f64 / out as f64;
    for i in 0..out {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(inp - 1);
        let i1 = (i0 + 1).min(inp - 1);
        let l = (src - i0 as f64) as f32;
        m[i * inp + i0] += 1.0 - l;
        m[i * inp + i1] += l;
    }
    Ok(Tensor::from_vec(m, (out, inp), device)?)
}

/// Bilinear resize of `[N, C, h, w]` to `[N, C, height, width]`, as two matrix products.
pub fn resize_bilinear(x: &Tensor, height: usize, width: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if (h, w) == (height, width) {
        return Ok(x.clone());
    }
    let dev = x.device();
    let aw = bilinear_matrix(width, w, dev)?.t()?;
    let ah = bilinear_matrix(height, h, dev)?.t()?;
    let y = x.reshape((n * c * h, w))?.matmul(&aw)?; // [n c h, W]
    let y = y
        .reshape((n, c, h, width))?
        .transpose(2, 3)?
        .contiguous()?
        .reshape((n * c * width, h))?
        .matmul(&ah)?; // [n c W, H]
    Ok(y.reshape((n, c, width, height))?
        .transpose(2, 3)?
        .contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bilinear_matches_pytorch_on_a_ramp() {
        // F.interpolate(torch.arange(4.).view(1,1,1,4), size=(1,8), mode="bilinear"):
        // [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3].
        let x = Tensor::new(&[0f32, 1., 2., 3.], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        let y: Vec<f32> = resize_bilinear(&x, 1, 8)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let e = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
        assert!(y.iter().zip(e).all(|(a, b)| (a - b).abs() < 1e-6), "{y:?}");
    }
}
