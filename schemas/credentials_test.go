package schemas

import (
	"strings"
	"testing"
)

// A config holding a credential in a URL is refused naming the field and
// what it holds, and never the credential itself; the options that say
// where a bucket is, keys, and placeholders pass.
func TestConfigCredentialsRefused(t *testing.T) {
	for _, tc := range []struct {
		field string
		edit  func(*Config)
	}{
		{"data.pool", func(c *Config) {
			c.Data.Pool = Dataset{Manifest: "https://b.s3.amazonaws.com/pool.csv?X-Amz-Credential=A&X-Amz-Signature=SECRET"}
		}},
		{"target.path", func(c *Config) { c.Target.Path = "https://acct.blob.core.windows.net/m/target.onnx?sv=2022&sig=SECRET" }},
		{"data.train", func(c *Config) { c.Data.Train = Dataset{Prefix: "s3://USER:SECRET@b/train/"} }},
		{"data.test", func(c *Config) {
			c.Data.Test = Dataset{WebDataset: "s3://b/test/?endpoint=http://u:SECRET@minio:9000"}
		}},
		{"classes_file", func(c *Config) { c.ClassesFile = "https://h/classes.txt?token=SECRET" }},
		{"retrain.trainer.command[3]", func(c *Config) {
			c.Retrain.Trainer = &Trainer{Command: []string{"train.sh", "{model}", "--hub", "https://hub/x?api_key=SECRET"}}
		}},
	} {
		c := compareConfig().WithDefaults()
		tc.edit(&c)
		err := c.Validate()
		fe, ok := err.(*FieldError)
		if !ok || fe.Field != tc.field || strings.Contains(err.Error(), "SECRET") || !strings.Contains(err.Error(), "history") {
			t.Errorf("want an error naming %s and why, without the secret; got %v", tc.field, err)
		}
	}
	c := compareConfig().WithDefaults()
	c.Data.Pool = Dataset{Manifest: "s3://pool/m.csv?region=eu-west-1&endpoint=http://minio:9000&use_path_style=true"}
	c.Target.Path = "/models/t.onnx"
	c.Retrain.Trainer = &Trainer{Command: []string{"bin/starter", "train-head", "-storage", "{storage}", "-job", "{job}", "-out", "{model}"}}
	if err := c.Validate(); err != nil {
		t.Errorf("a config without credentials: %v", err)
	}
}
