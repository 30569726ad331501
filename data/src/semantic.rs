//! Semantic label maps: one class index per pixel, read from and written to single-channel PNGs
//! (8-bit or 16-bit greyscale, or palette PNGs whose indices are the labels, as PASCAL VOC ships
//! them). 255 is the ignore index. ADE20K's `reduce_zero_label` is [`SemanticMask::reduce_zero_label`].

use crate::error::{Error, Problem, Record, Result};
use crate::io;
use crate::mask::nearest_index;
use std::collections::BTreeMap;
use std::path::Path;

/// Label value that losses and metrics skip.
pub const IGNORE_INDEX: u16 = 255;

/// A label map `[H, W]`, row-major, one `u16` class index per pixel.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SemanticMask {
    width: usize,
    height: usize,
    data: Vec<u16>,
}

/// Bit depth of a label PNG.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelDepth {
    /// 8-bit greyscale (labels 0..=255).
    Eight,
    /// 16-bit greyscale (labels 0..=65535).
    Sixteen,
}

impl SemanticMask {
    /// A mask filled with `value`.
    pub fn filled(width: usize, height: usize, value: u16) -> Self {
        Self {
            width,
            height,
            data: vec![value; width * height],
        }
    }

    /// A mask from row-major labels.
    ///
    /// # Panics
    /// When `data.len() != width * height` (a programming error).
    pub fn from_vec(width: usize, height: usize, data: Vec<u16>) -> Self {
        assert_eq!(data.len(), width * height, "label data length");
        Self {
            width,
            height,
            data,
        }
    }

    /// Width W.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height H.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Row-major labels, `[H * W]`.
    pub fn as_slice(&self) -> &[u16] {
        &self.data
    }

    /// Mutable row-major labels.
    pub fn as_mut_slice(&mut self) -> &mut [u16] {
        &mut self.data
    }

    /// Label at `(x, y)`.
    pub fn get(&self, x: usize, y: usize) -> u16 {
        self.data[y * self.width + x]
    }

    /// Sets the label at `(x, y)`.
    pub fn set(&mut self, x: usize, y: usize, v: u16) {
        self.data[y * self.width + x] = v;
    }

    /// ADE20K's `reduce_zero_label`, as mmsegmentation applies it: 0 (\"other\") becomes 255
    /// (ignored), every other label k becomes k - 1, and 255 stays 255.
    pub fn reduce_zero_label(&mut self) {
        for v in &mut self.data {
            *v = reduce_zero_label_value(*v);
        }
    }

    /// Pixel count per label.
    pub fn counts(&self) -> BTreeMap<u16, u64> {
        let mut m = BTreeMap::new();
        for &v in &self.data {
            *m.entry(v).or_insert(0) += 1;
        }
        m
    }

    /// Nearest-neighbour resize (labels are never interpolated).
    pub fn resize_nearest(&self, new_width: usize, new_height: usize) -> SemanticMask {
        let xs = nearest_index(self.width, new_width);
        let ys = nearest_index(self.height, new_height);
        let mut data = Vec::with_capacity(new_width * new_height);
        for &sy in &ys {
            let row = &self.data[sy * self.width..(sy + 1) * self.width];
            data.extend(xs.iter().map(|&sx| row[sx]));
        }
        SemanticMask::from_vec(new_width, new_height, data)
    }

    /// Mirrors left-right.
    pub fn hflip(&self) -> SemanticMask {
        let mut out = self.clone();
        for row in out.data.chunks_exact_mut(self.width.max(1)) {
            row.reverse();
        }
        out
    }

    /// Reads a label PNG: 8- or 16-bit greyscale (the value is the label) or palette (the index
    /// is the label). Colour PNGs are an error: labels must not be guessed from colours.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = io::read_bytes(path)?;
        Self::decode_png(&bytes, path)
    }

    /// Decodes label PNG bytes; `path` names them in errors.
    pub fn decode_png(bytes: &[u8], path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::invalid(Problem::new(path, Record::File, None, msg));
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::IDENTITY);
        let mut reader = decoder
            .read_info()
            .map_err(|e| bad(format!("cannot decode label PNG: {e}")))?;
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| bad("label PNG too large".into()))?;
        let mut buf = vec![0u8; size];
        let frame = reader
            .next_frame(&mut buf)
            .map_err(|e| bad(format!("cannot decode label PNG: {e}")))?;
        let (w, h) = (frame.width as usize, frame.height as usize);
        let stride = frame.line_size;
        let mut data = Vec::with_capacity(w * h);
        match (frame.color_type, frame.bit_depth) {
            (png::ColorType::Grayscale | png::ColorType::Indexed, png::BitDepth::Sixteen) => {
                for y in 0..h {
                    let row = &buf[y * stride..];
                    data.extend((0..w).map(|x| u16::from_be_bytes([row[2 * x], row[2 * x + 1]])));
                }
            }
            (png::ColorType::Grayscale | png::ColorType::Indexed, depth) => {
                let bits = depth as usize;
                let per_byte = 8 / bits;
                let mask = ((1u16 << bits) - 1) as u8;
                for y in 0..h {
                    let row = &buf[y * stride..];
                    data.extend((0..w).map(|x| {
                        let byte = row[x / per_byte];
                        let shift = 8 - bits * (x % per_byte + 1);
                        ((byte >> shift) & mask) as u16
                    }));
                }
            }
            (ct, _) => {
                return Err(bad(format!(
                    "expected a single-channel (greyscale or palette) label PNG, found {ct:?}; \
                     labels are not read from colours"
                )));
            }
        }
        Ok(SemanticMask::from_vec(w, h, data))
    }

    /// Reads a label PNG and checks it has its image's size `(width, height)`; the error names
    /// both files and both sizes.
    pub fn read_for_image(
        path: impl AsRef<Path>,
        image_path: impl AsRef<Path>,
        image_size: (usize, usize),
    ) -> Result<Self> {
        let m = Self::read(&path)?;
        check_same_size(
            path.as_ref(),
            (m.width, m.height),
            image_path.as_ref(),
            image_size,
        )?;
        Ok(m)
    }

    /// The smallest depth that holds every label.
    pub fn min_depth(&self) -> LabelDepth {
        if self.data.iter().all(|&v| v <= 255) {
            LabelDepth::Eight
        } else {
            LabelDepth::Sixteen
        }
    }

    /// PNG bytes at the given depth (8-bit fails when a label exceeds 255).
    pub fn encode_png(&self, depth: LabelDepth) -> std::result::Result<Vec<u8>, String> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_compression(png::Compression::Fast);
            let raw: Vec<u8> = match depth {
                LabelDepth::Eight => {
                    enc.set_depth(png::BitDepth::Eight);
                    if let Some(v) = self.data.iter().find(|&&v| v > 255) {
                        return Err(format!("label {v} does not fit an 8-bit PNG"));
                    }
                    self.data.iter().map(|&v| v as u8).collect()
                }
                LabelDepth::Sixteen => {
                    enc.set_depth(png::BitDepth::Sixteen);
                    self.data.iter().flat_map(|v| v.to_be_bytes()).collect()
                }
            };
            let mut w = enc.write_header().map_err(|e| e.to_string())?;
            w.write_image_data(&raw).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    /// 8-bit palette PNG bytes with PASCAL VOC's colour map, as VOC ships its
    /// `SegmentationClass` files (the index is the label; 255, the ignore index, is cream).
    pub fn encode_voc_png(&self) -> std::result::Result<Vec<u8>, String> {
        if let Some(v) = self.data.iter().find(|&&v| v > 255) {
            return Err(format!("label {v} does not fit an 8-bit PNG"));
        }
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Indexed);
            enc.set_depth(png::BitDepth::Eight);
            enc.set_palette((0..=255u8).flat_map(voc_colour).collect::<Vec<u8>>());
            let raw: Vec<u8> = self.data.iter().map(|&v| v as u8).collect();
            let mut w = enc.write_header().map_err(|e| e.to_string())?;
            w.write_image_data(&raw).map_err(|e| e.to_string())?;
            w.finish().map_err(|e| e.to_string())?;
        }
        Ok(out)
    }

    /// Writes a label PNG atomically, 8-bit when every label fits, else 16-bit.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        self.write_with_depth(path, self.min_depth())
    }

    /// Writes a label PNG atomically at the given depth.
    pub fn write_with_depth(&self, path: impl AsRef<Path>, depth: LabelDepth) -> Result<()> {
        let path = path.as_ref();
        let bytes = self
            .encode_png(depth)
            .map_err(|m| Error::invalid(Problem::new(path, Record::File, None, m)))?;
        io::write_atomic(path, &bytes)
    }
}

/// PASCAL VOC's colour of label `k` (the devkit's `labelcolormap`: the bits of `k` spread over
/// the high bits of R, G and B).
pub fn voc_colour(k: u8) -> [u8; 3] {
    let mut rgb = [0u8; 3];
    let mut c = k;
    for shift in (0..8).rev() {
        for (ch, out) in rgb.iter_mut().enumerate() {
            *out |= ((c >> ch) & 1) << shift;
        }
        c >>= 3;
    }
    rgb
}

/// One label through `reduce_zero_label`: 0 -> 255, 255 -> 255, k -> k - 1 (mmsegmentation's
/// arithmetic, so a 16-bit 256 also lands on 255).
pub fn reduce_zero_label_value(v: u16) -> u16 {
    match v {
        0 | 255 => IGNORE_INDEX,
        k => k - 1,
    }
}

/// Errors unless a label mask and its image have the same `(width, height)`.
pub fn check_same_size(
    mask_path: &Path,
    mask_size: (usize, usize),
    image_path: &Path,
    image_size: (usize, usize),
) -> Result<()> {
    if mask_size != image_size {
        return Err(Error::invalid(Problem::new(
            mask_path,
            Record::File,
            None,
            format!(
                "label mask is {}x{} but its image {} is {}x{} (width x height)",
                mask_size.0,
                mask_size.1,
                image_path.display(),
                image_size.0,
                image_size.1
            ),
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduce_zero_label_mapping() {
        let mut m = SemanticMask::from_vec(6, 1, vec![0, 1, 2, 150, 254, 255]);
        m.reduce_zero_label();
        assert_eq!(m.as_slice(), &[255, 0, 1, 149, 253, 255]);
        assert_eq!(reduce_zero_label_value(256), 255);
        assert_eq!(reduce_zero_label_value(300), 299);
    }

    #[test]
    fn eight_and_sixteen_bit_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let m8 = SemanticMask::from_vec(3, 2, vec![0, 1, 255, 7, 8, 9]);
        let p8 = dir.path().join("m8.png");
        m8.write(&p8).unwrap();
        assert_eq!(SemanticMask::read(&p8).unwrap(), m8);
        let img = image::open(&p8).unwrap();
        assert_eq!(img.color(), image::ColorType::L8);

        let m16 = SemanticMask::from_vec(3, 2, vec![0, 1000, 255, 65535, 256, 9]);
        let p16 = dir.path().join("m16.png");
        m16.write(&p16).unwrap();
        assert_eq!(SemanticMask::read(&p16).unwrap(), m16);
        assert_eq!(image::open(&p16).unwrap().color(), image::ColorType::L16);
        // A 16-bit file written by another tool (the image crate) reads the same.
        let other = dir.path().join("other16.png");
        let buf: image::ImageBuffer<image::Luma<u16>, Vec<u16>> =
            image::ImageBuffer::from_raw(3, 2, m16.as_slice().to_vec()).unwrap();
        buf.save(&other).unwrap();
        assert_eq!(SemanticMask::read(&other).unwrap(), m16);
        // And 16-bit labels refuse an 8-bit file.
        let err = m16
            .write_with_depth(dir.path().join("x.png"), LabelDepth::Eight)
            .unwrap_err();
        assert!(err.to_string().contains("label 1000 does not fit"), "{err}");
    }

    #[test]
    fn palette_png_indices_are_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pal.png");
        let file = std::fs::File::create(&p).unwrap();
        let mut enc = png::Encoder::new(file, 5, 1);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        let mut palette = vec![0u8; 256 * 3];
        palette[3..6].copy_from_slice(&[128, 0, 0]);
        enc.set_palette(palette);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0, 1, 15, 255, 1]).unwrap();
        w.finish().unwrap();
        assert_eq!(
            SemanticMask::read(&p).unwrap().as_slice(),
            &[0, 1, 15, 255, 1]
        );
    }

    #[test]
    fn voc_palette_pngs_have_the_devkit_colours_and_read_back_as_labels() {
        // The devkit's colour map: background black, aeroplane (1) dark red, person (15)
        // (192, 128, 128), the ignore index cream (224, 224, 192).
        assert_eq!(voc_colour(0), [0, 0, 0]);
        assert_eq!(voc_colour(1), [128, 0, 0]);
        assert_eq!(voc_colour(15), [192, 128, 128]);
        assert_eq!(voc_colour(255), [224, 224, 192]);
        let m = SemanticMask::from_vec(3, 2, vec![0, 1, 15, 255, 20, 0]);
        let bytes = m.encode_voc_png().unwrap();
        let back = SemanticMask::decode_png(&bytes, Path::new("x.png")).unwrap();
        assert_eq!(back, m);
        let rgb = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(rgb.get_pixel(2, 0).0, [192, 128, 128]);
    }

    #[test]
    fn colour_pngs_and_size_mismatch_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let rgb = dir.path().join("rgb.png");
        image::RgbImage::new(4, 4).save(&rgb).unwrap();
        let err = SemanticMask::read(&rgb).unwrap_err().to_string();
        assert!(err.contains("expected a single-channel"), "{err}");

        let lab = dir.path().join("lab.png");
        SemanticMask::filled(4, 3, 0).write(&lab).unwrap();
        let err = SemanticMask::read_for_image(&lab, dir.path().join("img.png"), (5, 3))
            .unwrap_err()
            .to_string();
        let d = dir.path().display();
        assert_eq!(
            err,
            format!(
                "{d}/lab.png: label mask is 4x3 but its image {d}/img.png is 5x3 (width x height)"
            )
        );
        assert!(SemanticMask::read_for_image(&lab, "img.png", (4, 3)).is_ok());
    }

    #[test]
    fn resize_and_flip_labels() {
        let m = SemanticMask::from_vec(2, 2, vec![1, 2, 3, 255]);
        assert_eq!(m.hflip().as_slice(), &[2, 1, 255, 3]);
        let r = m.resize_nearest(4, 4);
        assert_eq!(r.counts()[&255], 4);
        assert_eq!(r.resize_nearest(2, 2), m);
    }
}
