package schemas

import (
	"fmt"
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
	// Spellings that a URL parser reads otherwise, or not at all, and
	// names of other services' credentials.
	for _, manifest := range []string{
		"https://h.example/m.csv?a=1;sig=SECRET", "https://h.example/m.csv#sig=SECRET", "https://h.example/m%zz.csv?sig=SECRET",
		" https://U:SECRET@h/m.csv", "https://h/m.csv?sig=SECRET\n", "s3://b/m.csv?endpoint=http%3A%2F%2Fu%3ASECRET%40h",
		"https://h/m.csv?%73ig=SECRET", "https://h/m.csv?X-AMZ-SIGNATURE=SECRET",
		"https://h/m.csv?security-token=SECRET", "https://h/m.csv?private_token=SECRET", "https://h/m.csv?api-key=SECRET",
		"https://h/m.csv?client_secret=SECRET", "https://h/m.csv?access_key=SECRET", "https://h/m.csv?secret_key=SECRET",
		"https://h/m.csv?auth=SECRET", "https://h/m.csv?sessionToken=SECRET", "https://h/m.csv?x-goog-security-token=SECRET",
	} {
		c := compareConfig().WithDefaults()
		c.Data.Pool = Dataset{Manifest: manifest}
		if err := c.Validate(); err == nil || strings.Contains(err.Error(), "SECRET") {
			t.Errorf("manifest %q: %v, want it refused without the secret", manifest, err)
		}
	}
	c := compareConfig().WithDefaults()
	c.Retrain.Trainer = &Trainer{Command: []string{"sh", "-c", "curl -o x https://hub.example/x?token=SECRET; exit 1 {model}"}}
	if err := c.Validate(); err == nil {
		t.Error("a token before a shell's ';' in a trainer's command: accepted")
	}
	// Credentials as a trainer's arguments, and arguments that only look
	// alike.
	for _, tc := range []struct {
		command []string
		at      int // the secret's index; -1 for none
	}{
		{[]string{"train.py", "--password", "SECRET", "{model}"}, 2},
		{[]string{"train.py", "--hf-token=SECRET", "{model}"}, 1},
		{[]string{"env", "WANDB_API_KEY=SECRET", "python", "train.py", "{model}"}, 1},
		{[]string{"train.py", "-aws_secret_access_key", "SECRET", "{model}"}, 2},
		{[]string{"train.py", "--max-tokens", "512", "--tokenizer", "bpe", "--token-file", "/run/t", "{model}"}, -1},
		{[]string{"train.py", "--password-file", "/run/p", "--token=", "--secret", "--verbose", "{model}"}, -1},
		// In a shell's script; and values that are paths, or a working
		// directory (--pwd), not secrets.
		{[]string{"sh", "-c", "python train.py --hf-token=SECRET {model}"}, 2},
		{[]string{"sh", "-c", "python train.py --password SECRET {model}"}, 2},
		{[]string{"env", "GOOGLE_APPLICATION_CREDENTIALS=/etc/gcp/key.json", "python", "train.py", "{model}"}, -1},
		{[]string{"train.py", "--credentials", "/run/secrets/creds.json", "--private-key", "keys/k.pem", "--pwd", "/workspace", "--token", "{work}/t", "{model}"}, -1},
	} {
		c := compareConfig().WithDefaults()
		c.Retrain.Trainer = &Trainer{Command: tc.command}
		err := c.Validate()
		fe, ok := err.(*FieldError)
		switch {
		case tc.at < 0 && err != nil:
			t.Errorf("%q: %v, want it accepted", tc.command, err)
		case tc.at >= 0 && (!ok || fe.Field != fmt.Sprintf("retrain.trainer.command[%d]", tc.at) || strings.Contains(err.Error(), "SECRET")):
			t.Errorf("%q: %v, want an error naming command[%d] without the secret", tc.command, err, tc.at)
		}
	}
	c = compareConfig().WithDefaults()
	c.Data.Pool = Dataset{Manifest: "s3://pool/m.csv?region=eu-west-1&endpoint=http://minio:9000&use_path_style=true&kmskeyid=k1"}
	c.Similarity = &Model{Path: "gs://models/s.onnx?private_key_path=/etc/k.pem&access_id=sa@p.iam", Features: "f"}
	c.Target.Path = "/models/t.onnx"
	c.Retrain.Trainer = &Trainer{Command: []string{"bin/starter", "train-head", "-storage", "{storage}", "-job", "{job}", "-out", "{model}"}}
	if err := c.Validate(); err != nil {
		t.Errorf("a config without credentials: %v", err)
	}
}
