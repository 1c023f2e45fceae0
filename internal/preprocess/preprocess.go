// Package preprocess turns encoded user images into one model input tensor slot.
//
// Every ONNX model in DCD wants its input in its own shape: NCHW or NHWC,
// gray or RGB, a fixed height and width, values in [0,1] or [0,255], with or
// without a per-channel mean/std. Users upload whatever they have (any format,
// any size, 8- or 16-bit, with or without alpha). A Spec captures one model's
// wants so that a single Fill call can bridge the two without the caller
// knowing about pixel formats, and so that the same rules (luma weights,
// resampling, alpha handling) hold for every model.
package preprocess

import (
	"bytes"
	"errors"
	"fmt"
	"image"
	"image/color"
	"math"
	"strings"

	// Registered for image.Decode; users upload whatever their tools write.
	_ "image/gif"
	_ "image/jpeg"
	_ "image/png"

	_ "golang.org/x/image/bmp"
	_ "golang.org/x/image/webp"
)

// Accepted values for the string fields of Spec.
const (
	LayoutNCHW = "NCHW"
	LayoutNHWC = "NHWC"

	ResizeSquash = "squash"
	ResizeCrop   = "crop"

	ScaleUnit = "unit"
	ScaleByte = "byte"

	OrderRGB = "rgb"
	OrderBGR = "bgr"

	AlphaBlack  = "black"
	AlphaIgnore = "ignore"

	InterpolationArea     = "area"
	InterpolationBilinear = "bilinear"
	InterpolationBicubic  = "bicubic"
)

// DecoderVersion is the version of how images become pixels here: the
// decoders and what is done to their output before resizing (colour
// range, alpha, damaged files accepted or refused). Features cached by an
// older one are not this image's features now, nor its rejection this
// image's fault, so it is part of the features cache's key
// (features.Spec.Digest). Raise it with each change that alters any
// image's pixels or whether it decodes; every pool is then embedded once
// more. 2: lossy WebP in full range, a BMP whose alpha is all zero opaque,
// a baseline JPEG without its end marker accepted.
const DecoderVersion = 2

// maxSide bounds Height and Width so that Size cannot overflow, and
// MaxArea their product: a typo in a config (16000 for 160) must not make
// every batch ask for gigabytes. At MaxArea an image is 192 MiB of float32
// (three channels), far past any real model's input (ViT-L at 518: 3 MiB).
const (
	maxSide = 1 << 14
	MaxArea = 1 << 24
)

// maxDecodeSide bounds each side of a decoded image, JPEG's own limit: the
// resize's buffers grow with a side, not the area, and a 65 KB PNG of
// 2^26×1 pixels made them a gigabyte. It is a bound on resources, like
// maxDecodePixels, not a change of any image's pixels: features cached of
// such an image before it stay (DecoderVersion is not raised).
const maxDecodeSide = 1<<16 - 1

// maxDecodePixels bounds the decoded image area. A few hundred bytes of PNG
// can claim to be gigapixels; checking the header first stops such uploads
// from exhausting memory. 64 Mpx is above any camera a user is likely to have.
const maxDecodePixels = 1 << 26

// maxJPEGScans bounds a JPEG's scans. Each is a pass over the image's
// blocks, so a 32 KB progressive file of 2,000 scans of end-of-band runs
// held a decoder for seconds (minutes at 64 megapixels). Encoders write
// about ten; a script with a band for every coefficient of every
// component, under 200. Counted as 0xff 0xda pairs, which entropy-coded
// data cannot hold; a thumbnail's in the metadata counts too.
const maxJPEGScans = 256

// Spec says what one model wants as input. The zero value is not valid; call Validate.
type Spec struct {
	Layout   string    `json:"layout" yaml:"layout"`                 // "NCHW" (default) or "NHWC"
	Channels int       `json:"channels" yaml:"channels"`             // 1 or 3
	Height   int       `json:"height" yaml:"height"`                 // rows of the model input
	Width    int       `json:"width" yaml:"width"`                   // columns of the model input
	Resize   string    `json:"resize" yaml:"resize"`                 // "squash" (default: scale to HxW ignoring aspect) or "crop" (scale shorter side to fit, centre crop)
	Scale    string    `json:"scale" yaml:"scale"`                   // "unit" (default: [0,1]) or "byte" ([0,255])
	Mean     []float32 `json:"mean,omitempty" yaml:"mean,omitempty"` // per channel, applied after Scale: (v-mean)/std; empty = none
	Std      []float32 `json:"std,omitempty" yaml:"std,omitempty"`   // per channel; empty = 1
	// Shorter, with resize crop, is the size the image's shorter side is
	// resized to before the centre Height×Width is cut from it, as
	// torchvision's Resize(shorter) then CenterCrop does (256 for 224 is
	// ImageNet's evaluation); 0: the crop spans the shorter side whole.
	Shorter int `json:"shorter,omitempty" yaml:"shorter,omitempty"`
	// Order is the order of 3 channels: "rgb" (default) or "bgr" (models
	// trained on OpenCV's images, Caffe's). Mean and Std follow it.
	Order string `json:"order,omitempty" yaml:"order,omitempty"`
	// Alpha is what a transparent pixel shows: "black" (default: its
	// colour composited onto black) or "ignore" (the colour stored under
	// it, as PIL's convert("RGB") and so torchvision's ImageFolder give).
	Alpha string `json:"alpha,omitempty" yaml:"alpha,omitempty"`
	// Interpolation is how the image is resized: "area" (default: the
	// mean of the pixels an output covers when shrinking, linear between
	// the nearest two when growing), or PIL's "bilinear" or "bicubic"
	// (its filters stretched over the pixels an output covers, as
	// torchvision's Resize of a PIL image weighs them; bicubic is
	// DINOv2's and timm's).
	Interpolation string `json:"interpolation,omitempty" yaml:"interpolation,omitempty"`
}

// WithDefaults returns s with empty Layout, Resize and Scale set to their
// defaults. It also normalises case and surrounding space, because these
// values come from hand-written config files where "nchw" or "Crop" are
// obvious intent rather than errors. Mean and Std are shared with s.
func (s Spec) WithDefaults() Spec {
	s.Layout = canonical(s.Layout, LayoutNCHW, LayoutNHWC, strings.ToUpper)
	s.Resize = canonical(s.Resize, ResizeSquash, ResizeCrop, strings.ToLower)
	s.Scale = canonical(s.Scale, ScaleUnit, ScaleByte, strings.ToLower)
	// RGB is written as no order (black as no alpha), so that a spec's
	// digest, which names the features it made, is what it was before
	// these fields existed.
	// ... and one channel has no order, whatever the config says.
	if s.Order = strings.ToLower(strings.TrimSpace(s.Order)); s.Order == OrderRGB || s.Channels == 1 {
		s.Order = ""
	}
	if s.Alpha = strings.ToLower(strings.TrimSpace(s.Alpha)); s.Alpha == AlphaBlack {
		s.Alpha = ""
	}
	if s.Interpolation = strings.ToLower(strings.TrimSpace(s.Interpolation)); s.Interpolation == InterpolationArea {
		s.Interpolation = ""
	}
	return s
}

// canonical returns v normalised by fold, or def if v is blank. Spec.Fill
// calls WithDefaults per image, so the common already-canonical values
// return before any string work.
func canonical(v, def, other string, fold func(string) string) string {
	if v == def || v == other {
		return v
	}
	if v = fold(strings.TrimSpace(v)); v == "" {
		return def
	}
	return v
}

// Validate reports the first problem with s after defaults are applied,
// naming the offending field, so that a bad model config fails at load time
// rather than on the first user image.
func (s Spec) Validate() error {
	s = s.WithDefaults()
	if s.Layout != LayoutNCHW && s.Layout != LayoutNHWC {
		return fmt.Errorf("preprocess: layout must be NCHW or NHWC, got %q", s.Layout)
	}
	if s.Channels != 1 && s.Channels != 3 {
		return fmt.Errorf("preprocess: channels must be 1 or 3, got %d", s.Channels)
	}
	if s.Height <= 0 || s.Height > maxSide {
		return fmt.Errorf("preprocess: height must be in 1..%d, got %d", maxSide, s.Height)
	}
	if s.Width <= 0 || s.Width > maxSide {
		return fmt.Errorf("preprocess: width must be in 1..%d, got %d", maxSide, s.Width)
	}
	if s.Height*s.Width > MaxArea {
		return fmt.Errorf("preprocess: height × width must be at most %d (4096×4096), got %d×%d", MaxArea, s.Height, s.Width)
	}
	if s.Resize != ResizeSquash && s.Resize != ResizeCrop {
		return fmt.Errorf("preprocess: resize must be squash or crop, got %q", s.Resize)
	}
	if s.Scale != ScaleUnit && s.Scale != ScaleByte {
		return fmt.Errorf("preprocess: scale must be unit or byte, got %q", s.Scale)
	}
	if s.Shorter != 0 && (s.Resize != ResizeCrop || s.Shorter < 0 || s.Shorter > maxSide) {
		return fmt.Errorf("preprocess: shorter must be in 1..%d, with resize crop; got %d with resize %s", maxSide, s.Shorter, s.Resize)
	}
	if s.Shorter != 0 && s.Shorter < max(s.Height, s.Width) {
		// torchvision's CenterCrop pads a crop larger than the image.
		return fmt.Errorf("preprocess: shorter %d is less than the crop's %d×%d: the crop would run past the resized image", s.Shorter, s.Width, s.Height)
	}
	if s.Order != "" && s.Order != OrderBGR {
		return fmt.Errorf("preprocess: order must be rgb or bgr, got %q", s.Order)
	}
	if s.Alpha != "" && s.Alpha != AlphaIgnore {
		return fmt.Errorf("preprocess: alpha must be black or ignore, got %q", s.Alpha)
	}
	if _, ok := pilFilters[s.Interpolation]; s.Interpolation != "" && !ok {
		return fmt.Errorf("preprocess: interpolation must be area, bilinear or bicubic, got %q", s.Interpolation)
	}
	if len(s.Mean) != 0 && len(s.Mean) != s.Channels {
		return fmt.Errorf("preprocess: mean must have %d entries (one per channel), got %d", s.Channels, len(s.Mean))
	}
	for i, m := range s.Mean {
		if math.IsNaN(float64(m)) || math.IsInf(float64(m), 0) {
			return fmt.Errorf("preprocess: mean[%d] must be finite, got %v", i, m)
		}
		// A pixel scaled to [0,1] has a mean in it: 123.675 is ImageNet's
		// red in bytes, which would make every input about -500.
		if s.Scale == ScaleUnit && (m > 1 || m < -1) {
			return fmt.Errorf("preprocess: mean[%d] is %v, but with scale unit pixels are in [0,1]: write the mean in that unit (divide by 255), or set scale byte", i, m)
		}
	}
	if len(s.Std) != 0 && len(s.Std) != s.Channels {
		return fmt.Errorf("preprocess: std must have %d entries (one per channel), got %d", s.Channels, len(s.Std))
	}
	for i, v := range s.Std {
		// Written as !(v > 0) so that NaN is rejected too.
		if !(v > 0) || math.IsInf(float64(v), 0) {
			return fmt.Errorf("preprocess: std[%d] must be finite and > 0, got %v", i, v)
		}
	}
	return nil
}

// Size is the number of float32 values one image occupies (Channels*Height*Width).
// It is 0 for specs whose dimensions are not positive.
func (s Spec) Size() int {
	if s.Channels <= 0 || s.Height <= 0 || s.Width <= 0 {
		return 0
	}
	return s.Channels * s.Height * s.Width
}

// Decode decodes PNG, JPEG, GIF, BMP and WebP. GIF yields its first frame.
// Images claiming more than maxDecodePixels are refused before their pixels
// are decoded.
func Decode(data []byte) (image.Image, error) {
	if img, ok := decodePNG(data); ok {
		return img, nil
	}
	if img, ok := decodeJPEG(data); ok {
		return img, nil
	}
	return decodeStd(data)
}

// DecodeFill is Decode followed by p.Fill(dst, img), except that a PNG the
// fast path takes is decoded into pixels reused from image to image rather
// than into a new image. An image whose pixels are large waits for room in
// the process's decode budget (enterGate).
func (p Prepared) DecodeFill(dst []float32, data []byte) error {
	defer enterGate(data)()
	fill := func(img image.Image) error { return p.Fill(dst, img) }
	if ok, err := withPNG(data, fill); ok {
		return err
	}
	if ok, err := withJPEG(data, fill); ok {
		return err
	}
	img, err := decodeStd(data)
	if err != nil {
		return err
	}
	return p.Fill(dst, img)
}

// minBytes is a lower bound on the size of a file encoding cfg's pixels,
// where the format's compression has a bound: deflate expands at most
// 1032:1, so a PNG holds at least its rows (a filter byte and the fewest
// bits a pixel of its colour model can take) over 1032; a BMP holds its
// rows whole, each padded to 4 bytes; GIF's LZW expands at most 2731:1
// (a 12-bit code for a string of up to 4096 pixels). JPEG's bound is on
// its scans' bytes, not the file's (jpegTooSmall). Other formats get 0.
func minBytes(format string, cfg image.Config) int64 {
	w, h := int64(cfg.Width), int64(cfg.Height)
	switch format {
	case "png":
		bits := int64(1) // gray of 1 bit, or a palette of 2 colours
		switch cfg.ColorModel {
		case color.RGBAModel: // 8-bit RGB
			bits = 24
		case color.NRGBAModel, color.Gray16Model: // 8-bit gray+alpha or RGBA; 16-bit gray
			bits = 16
		case color.NRGBA64Model: // 16-bit gray+alpha or RGBA
			bits = 32
		case color.RGBA64Model: // 16-bit RGB
			bits = 48
		}
		return h * (1 + (w*bits+7)/8) / 1032
	case "bmp":
		bits := int64(24) // RGB or RGBA
		if p, ok := cfg.ColorModel.(color.Palette); ok {
			bits = 1 // at least enough to index the palette
			for 1<<bits < len(p) {
				bits *= 2
			}
		}
		return h * ((w*bits + 31) / 32 * 4)
	case "gif":
		return w * h / 2731
	}
	return 0
}

// maxWebPPixels bounds a WebP image's area below maxDecodePixels: its
// lossless coding has no bound on its compression (a Huffman code of one
// symbol takes 0 bits a pixel), so a few dozen bytes can claim it whole.
const maxWebPPixels = 1 << 24

// wide16 says whether a PNG is 16-bit with colour or transparency, which
// image/png decodes at 8 bytes a pixel: any colour type but gray, and gray
// with a tRNS chunk (before its first IDAT, where PNG puts it).
func wide16(data []byte) bool {
	if len(data) <= 25 || data[24] != 16 {
		return false
	}
	if data[25] != 0 {
		return true
	}
	trns, idat := bytes.Index(data, []byte("tRNS")), bytes.Index(data, []byte("IDAT"))
	return trns >= 0 && (idat < 0 || trns < idat)
}

// decodeStd decodes with the standard library's registered decoders: every
// format, and every PNG the fast path declines.
func decodeStd(data []byte) (image.Image, error) {
	if len(data) == 0 {
		return nil, errors.New("preprocess: decode: empty input")
	}
	cfg, format, err := image.DecodeConfig(bytes.NewReader(data))
	if errors.Is(err, image.ErrFormat) {
		// Read from its bytes, whatever its name says (a TIFF, HEIC, a
		// Thumbs.db among the images).
		return nil, fmt.Errorf("preprocess: decode: not a JPEG, PNG, GIF, BMP or WebP image, the formats DCD decodes: %w", err)
	}
	if err != nil {
		return nil, fmt.Errorf("preprocess: decode: %w", err)
	}
	if cfg.Width <= 0 || cfg.Height <= 0 {
		return nil, fmt.Errorf("preprocess: decode: %s image has no pixels (%dx%d)", format, cfg.Width, cfg.Height)
	}
	if int64(cfg.Width)*int64(cfg.Height) > maxDecodePixels {
		return nil, fmt.Errorf("preprocess: decode: %s image is %dx%d, more than %d pixels", format, cfg.Width, cfg.Height, maxDecodePixels)
	}
	if cfg.Width > maxDecodeSide || cfg.Height > maxDecodeSide {
		return nil, fmt.Errorf("preprocess: decode: %s image is %dx%d, a side longer than %d pixels", format, cfg.Width, cfg.Height, maxDecodeSide)
	}
	if need := minBytes(format, cfg); int64(len(data)) < need {
		// The decoders allocate the whole image before they read a
		// pixel: a 72-byte PNG claiming 8192×8192 cost 256 MiB, a
		// 54-byte BMP as much, per decoder at once.
		return nil, fmt.Errorf("preprocess: decode: %s image claims %dx%d pixels in %d bytes, fewer than the %d its encoding needs at least", format, cfg.Width, cfg.Height, len(data), need)
	}
	if format == "webp" && int64(cfg.Width)*int64(cfg.Height) > maxWebPPixels {
		return nil, fmt.Errorf("preprocess: decode: webp image is %dx%d, more than %d pixels", cfg.Width, cfg.Height, maxWebPPixels)
	}
	if format == "png" && wide16(data) && int64(cfg.Width)*int64(cfg.Height) > maxDecodePixels/2 {
		// 16-bit colour, or gray with alpha, is 8 bytes a pixel in
		// image/png's RGBA64 or NRGBA64: 512 MiB at 2^26 pixels, for
		// each decoder at once.
		return nil, fmt.Errorf("preprocess: decode: 16-bit png image with colour or transparency is %dx%d, more than %d pixels", cfg.Width, cfg.Height, maxDecodePixels/2)
	}
	if format == "jpeg" {
		if blocks, coded := jpegBudget(data); jpegTooSmall(blocks, coded) {
			// A 150-byte progressive JPEG claiming 8192×8192 cost
			// image/jpeg 960 MiB; padded with a comment, the file's size
			// says nothing.
			return nil, fmt.Errorf("preprocess: decode: jpeg image claims %dx%d pixels (%d blocks) in %d bytes of coded data, fewer than a bit a block", cfg.Width, cfg.Height, blocks, coded)
		}
		if n := bytes.Count(data, []byte{0xff, jpegSOS}); n > maxJPEGScans {
			return nil, fmt.Errorf("preprocess: decode: jpeg image has %d scans, more than %d (each is a pass over the image)", n, maxJPEGScans)
		}
	}
	img, _, err := image.Decode(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("preprocess: decode %s: %w", format, err)
	}
	switch format {
	case "webp":
		fullRange(img)
	case "bmp":
		opaqueIfClear(img)
	}
	return img, nil
}

// opaqueIfClear makes a BMP whose every pixel is transparent opaque. A
// 32-bit BI_RGB BMP's fourth byte is padding, which x/image/bmp reads as
// alpha when the header is V4 or V5, and writers leave it 0: the picture
// would be all transparent (black, with the default alpha). PIL reads
// such a file as BGRX, and browsers make it opaque this way.
func opaqueIfClear(img image.Image) {
	m, ok := img.(*image.NRGBA)
	if !ok {
		return
	}
	for i := 3; i < len(m.Pix); i += 4 {
		if m.Pix[i] != 0 {
			return
		}
	}
	for i := 3; i < len(m.Pix); i += 4 {
		m.Pix[i] = 0xff
	}
}

// fullRange widens a lossy WebP's planes in place to the full range that
// image.YCbCr means. VP8 codes BT.601's video range (Y 16 to 235, chroma
// 16 to 240), as libwebp, and so PIL, decodes it; x/image/webp returns the
// planes as they are (golang/go#40173), which read as full range give a
// washed-out picture: black at 16, white at 235.
func fullRange(img image.Image) {
	var y, cb, cr []uint8
	switch m := img.(type) {
	case *image.YCbCr:
		y, cb, cr = m.Y, m.Cb, m.Cr
	case *image.NYCbCrA:
		y, cb, cr = m.Y, m.Cb, m.Cr
	default:
		return // lossless: RGB already
	}
	for i, v := range y {
		y[i] = videoLuma[v]
	}
	for i, v := range cb {
		cb[i] = videoChroma[v]
	}
	for i, v := range cr {
		cr[i] = videoChroma[v]
	}
}

// videoLuma and videoChroma map BT.601 video-range values to full range.
var videoLuma, videoChroma = func() (l, c [256]uint8) {
	for v := range 256 {
		l[v] = uint8(min(max(math.Round(float64(v-16)*255/219), 0), 255))
		c[v] = uint8(min(max(math.Round(float64(v-128)*255/224)+128, 0), 255))
	}
	return
}()
