package activities

import "testing"

// A model's external data is a file in the model's folder, of its bucket.
func TestBesideRef(t *testing.T) {
	for _, c := range []struct{ ref, rel, want string }{
		{"models/dino.onnx", "dino.onnx.data", "models/dino.onnx.data"},
		{"models/dino.onnx", "weights/w.bin", "models/weights/w.bin"},
		{"dino.onnx", "dino.onnx.data", "dino.onnx.data"},
		{"s3://b/models/dino.onnx?region=eu", "dino.onnx.data", "s3://b/models/dino.onnx.data?region=eu"},
		{"file:///srv/m/dino.onnx", "dino.onnx.data", "file:///srv/m/dino.onnx.data"},
		{"models/dino.onnx", "../secrets/key", ""},
		{"models/dino.onnx", "/etc/passwd", ""},
		{"dino.onnx", "../x", ""},
		{"models/dino.onnx", "", ""},
	} {
		got, err := besideRef(c.ref, c.rel)
		if c.want == "" && err == nil || c.want != "" && (err != nil || got != c.want) {
			t.Errorf("besideRef(%q, %q) = %q, %v; want %q", c.ref, c.rel, got, err, c.want)
		}
	}
}
