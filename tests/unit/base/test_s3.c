/* test_s3.c - the S3 pieces imgdedup writes itself: locations, settings from
 * the AWS conventions, the credentials file, canonical queries, URLs, and
 * the ListObjectsV2 and error bodies.  (Signing is libcurl's; requests are
 * tested against a server in test_fetch.c and against Swift end to end.) */
#include "testutil.h"
#include "base/s3.h"

#include <stdlib.h>
#include <string.h>

static void clear_env(void)
{
	static const char *const vars[] = {
		"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
		"AWS_SHARED_CREDENTIALS_FILE"};
	for (size_t i = 0; i < IDD_ARRAY_LEN(vars); i++)
		unsetenv(vars[i]);
}

static void test_location(void **state)
{
	(void)state;
	char *b, *p;
	idd_error err;
	assert_true(idd_is_s3("s3://bkt"));
	assert_true(idd_is_s3("S3://bkt/x"));
	assert_false(idd_is_s3("http://bkt"));
	assert_false(idd_is_s3("/s3://x"));
	assert_int_equal(idd_s3_parse_location("s3://bkt", &b, &p, &err), IDD_OK);
	assert_string_equal(b, "bkt");
	assert_string_equal(p, "");
	free(b);
	free(p);
	assert_int_equal(idd_s3_parse_location("s3://my-bucket.x//images/2024/", &b, &p, &err), IDD_OK);
	assert_string_equal(b, "my-bucket.x");
	assert_string_equal(p, "images/2024");
	free(b);
	free(p);
	static const char *const bad[] = {"s3://", "s3://ab", "s3:///x", "s3://a b/x", "s3://bkt/../x",
	                                  "s3://bkt/a/./b", "s3://.bkt", "s3://b..kt/x", "s3://bkt/a\nb",
	                                  "http://bkt/x"};
	for (size_t i = 0; i < IDD_ARRAY_LEN(bad); i++) {
		assert_int_not_equal(idd_s3_parse_location(bad[i], &b, &p, &err), IDD_OK);
		assert_null(b);
		assert_null(p);
	}
}

static void test_credentials_file(void **state)
{
	(void)state;
	const char *text =
		"# comment\n"
		"[default]\n"
		"aws_access_key_id = AKIDDEFAULT\n"
		"aws_secret_access_key=secret/with+chars=\n"
		"\n"
		"  [ other ]  \r\n"
		"; another comment\n"
		"AWS_ACCESS_KEY_ID\t=  test:tester  \r\n"
		"aws_secret_access_key = testing\n"
		"aws_session_token = TOKEN\n"
		"region = eu-west-1\n"
		"[profile named]\n"
		"aws_access_key_id = N\n"
		"aws_secret_access_key = NS\n"
		"[half]\n"
		"aws_access_key_id = only\n";
	char *ak, *sk, *tok;
	idd_error err;
	assert_int_equal(idd_s3_credentials_parse("f", text, strlen(text), "default", &ak, &sk, &tok, &err),
	                 IDD_OK);
	assert_string_equal(ak, "AKIDDEFAULT");
	assert_string_equal(sk, "secret/with+chars=");
	assert_null(tok);
	free(ak);
	free(sk);
	assert_int_equal(idd_s3_credentials_parse("f", text, strlen(text), "other", &ak, &sk, &tok, &err),
	                 IDD_OK);
	assert_string_equal(ak, "test:tester"); /* a colon in the key, as Swift's are */
	assert_string_equal(sk, "testing");
	assert_string_equal(tok, "TOKEN");
	free(ak);
	free(sk);
	free(tok);
	assert_int_equal(idd_s3_credentials_parse("f", text, strlen(text), "named", &ak, &sk, &tok, &err),
	                 IDD_OK);
	assert_string_equal(ak, "N");
	free(ak);
	free(sk);
	/* a profile without both keys, or no such profile: IDD_ENOENT naming it */
	assert_int_equal(idd_s3_credentials_parse("f", text, strlen(text), "half", &ak, &sk, &tok, &err),
	                 IDD_ENOENT);
	assert_non_null(strstr(err.msg, "half"));
	assert_null(ak);
	assert_int_equal(idd_s3_credentials_parse("f", text, strlen(text), "nope", &ak, &sk, &tok, &err),
	                 IDD_ENOENT);
	assert_non_null(strstr(err.msg, "no profile 'nope'"));
	/* not INI: refused with the line number, never echoing the content */
	const char *junk = "[default]\naws_secret_access_key = hunter2\nthis is not ini\n";
	assert_int_equal(idd_s3_credentials_parse("f", junk, strlen(junk), "default", &ak, &sk, &tok, &err),
	                 IDD_ECORRUPT);
	assert_non_null(strstr(err.msg, "line 3"));
	assert_null(strstr(err.msg, "hunter2"));
	const char *unclosed = "[default\n";
	assert_int_equal(idd_s3_credentials_parse("f", unclosed, strlen(unclosed), "default", &ak, &sk,
	                                          &tok, &err),
	                 IDD_ECORRUPT);
	char nul[] = "[default]\naws_access_key_id = a\0b\naws_secret_access_key = s\n";
	assert_int_equal(idd_s3_credentials_parse("f", nul, sizeof nul - 1, "default", &ak, &sk, &tok, &err),
	                 IDD_ECORRUPT);
}

static void test_canonical_query(void **state)
{
	(void)state;
	idd_error err;
	/* given in any order: sorted by name, names and values encoded */
	idd_s3_param p[] = {{"prefix", "dir a/b+c"}, {"list-type", "2"},
	                    {"continuation-token", "1/x+y=="}, {"max-keys", "1000"},
	                    {"encoding-type", "url"}};
	char *q = idd_s3_canonical_query(p, IDD_ARRAY_LEN(p), &err);
	assert_non_null(q);
	assert_string_equal(q, "continuation-token=1%2Fx%2By%3D%3D&encoding-type=url&list-type=2&"
	                       "max-keys=1000&prefix=dir%20a%2Fb%2Bc");
	free(q);
	/* equal names sort by value; empty values keep their '=' */
	idd_s3_param d[] = {{"b", "2"}, {"a", ""}, {"b", "1"}, {"A", "x"}};
	q = idd_s3_canonical_query(d, IDD_ARRAY_LEN(d), &err);
	assert_string_equal(q, "A=x&a=&b=1&b=2");
	free(q);
	q = idd_s3_canonical_query(NULL, 0, &err);
	assert_string_equal(q, "");
	free(q);
	/* unreserved characters stay, everything else is %XX upper case */
	idd_buf b = {0};
	idd_s3_uri_encode(&b, "aZ09-_.~ /\xc3\xa9*", false);
	idd_buf_put_u8(&b, 0);
	assert_string_equal((char *)b.data, "aZ09-_.~%20%2F%C3%A9%2A");
	b.len = 0;
	idd_s3_uri_encode(&b, "a b/c", true);
	idd_buf_put_u8(&b, 0);
	assert_string_equal((char *)b.data, "a%20b/c");
	idd_buf_free(&b);
}

static void test_config(void **state)
{
	(void)state;
	idd_s3_config c;
	idd_error err;
	clear_env();
	setenv("AWS_ACCESS_KEY_ID", "test:tester", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SECRETVALUE", 1);
	/* AWS itself: virtual-hosted when the bucket name allows it */
	assert_int_equal(idd_s3_config_load("s3://bkt/pre", &c, &err), IDD_OK);
	assert_string_equal(c.region, "us-east-1");
	assert_string_equal(c.sigv4, "aws:amz:us-east-1:s3");
	assert_false(c.path_style);
	char *u = idd_s3_url(&c, "pre/a b.raw", NULL, &err);
	assert_string_equal(u, "https://bkt.s3.us-east-1.amazonaws.com/pre/a%20b.raw");
	free(u);
	idd_s3_config_free(&c);
	setenv("AWS_DEFAULT_REGION", "eu-west-1", 1);
	assert_int_equal(idd_s3_config_load("s3://my.dotted.bucket", &c, &err), IDD_OK);
	assert_true(c.path_style); /* dots break the TLS wildcard */
	u = idd_s3_url(&c, "k", "list-type=2", &err);
	assert_string_equal(u, "https://s3.eu-west-1.amazonaws.com/my.dotted.bucket/k?list-type=2");
	free(u);
	idd_s3_config_free(&c);
	setenv("AWS_REGION", "us-west-2", 1); /* wins over AWS_DEFAULT_REGION */
	setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:8080/", 1);
	assert_int_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_string_equal(c.region, "us-west-2");
	assert_true(c.path_style);
	u = idd_s3_url(&c, "", "a=1", &err);
	assert_string_equal(u, "http://127.0.0.1:8080/bkt/?a=1");
	free(u);
	assert_string_equal(c.access_key, "test:tester");
	idd_s3_config_free(&c);
	setenv("AWS_ENDPOINT_URL_S3", "https://s3.example:9000", 1); /* the service-specific one wins */
	assert_int_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_string_equal(c.endpoint, "https://s3.example:9000");
	idd_s3_config_free(&c);
	setenv("AWS_ENDPOINT_URL_S3", "ftp://x", 1);
	assert_int_not_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "AWS_ENDPOINT_URL_S3"));
	unsetenv("AWS_ENDPOINT_URL_S3");
	setenv("AWS_REGION", "us-east-1\nX: y", 1);
	assert_int_not_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	setenv("AWS_REGION", "us-east-1", 1);

	/* no keys in the environment: the shared credentials file, AWS_PROFILE */
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	char *dir = tu_mkdtemp();
	const char *ini = "[default]\naws_access_key_id=D\naws_secret_access_key=DS\n"
	                  "[ci]\naws_access_key_id=C\naws_secret_access_key=CS\naws_session_token=T\n";
	char *path = tu_write(dir, "credentials", ini, strlen(ini));
	setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
	assert_int_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_string_equal(c.access_key, "D");
	assert_null(c.session_token);
	idd_s3_config_free(&c);
	setenv("AWS_PROFILE", "ci", 1);
	assert_int_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_string_equal(c.access_key, "C");
	assert_string_equal(c.secret_key, "CS");
	assert_string_equal(c.session_token, "T");
	idd_s3_config_free(&c);
	setenv("AWS_PROFILE", "absent", 1);
	assert_int_not_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "no profile 'absent'"));
	/* no file: the message says what to set */
	char *missing = idd_path_join(dir, "missing", NULL);
	setenv("AWS_SHARED_CREDENTIALS_FILE", missing, 1);
	assert_int_not_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_non_null(strstr(err.msg, "AWS_ACCESS_KEY_ID"));
	assert_non_null(strstr(err.msg, missing));
	/* a secret is never part of a message */
	setenv("AWS_ACCESS_KEY_ID", "K", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SECRETVALUE\r\nX-Injected: 1", 1);
	assert_int_not_equal(idd_s3_config_load("s3://bkt", &c, &err), IDD_OK);
	assert_null(strstr(err.msg, "SECRETVALUE"));
	clear_env();
	tu_rmtree(dir);
	free(missing);
	free(path);
	free(dir);
}

static void test_list_parse(void **state)
{
	(void)state;
	idd_error err;
	idd_s3_page pg;
	const char *xml =
		"<?xml version='1.0' encoding='UTF-8'?>\n"
		"<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bkt</Name>"
		"<Prefix>pre/</Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys><EncodingType>url</EncodingType>"
		"<IsTruncated>true</IsTruncated><NextContinuationToken>dG9r+/ZW4=</NextContinuationToken>"
		"<Contents><Key>pre/a%20b%2Bc.raw</Key><LastModified>2024-01-31T12:34:56.789Z</LastModified>"
		"<ETag>&quot;d41d8cd98f00b204e9800998ecf8427e&quot;</ETag><Size>1048576</Size>"
		"<StorageClass>STANDARD</StorageClass></Contents>"
		"<Contents><Key>pre/x+y&amp;z.qcow2</Key><LastModified>1970-01-01T00:00:00.000Z</LastModified>"
		"<ETag>\"abc-2\"</ETag><Size>0</Size></Contents>"
		"<Contents><Key>pre/%C3%A9t%C3%A9.img</Key><LastModified>2024-02-29T00:00:01Z</LastModified>"
		"<Size>18446744073709551615</Size></Contents>"
		"</ListBucketResult>";
	assert_int_equal(idd_s3_list_parse("page", xml, strlen(xml), true, &pg, &err), IDD_OK);
	assert_true(pg.truncated);
	assert_string_equal(pg.next_token, "dG9r+/ZW4="); /* opaque: not url-decoded */
	assert_int_equal(pg.n, 3);
	assert_string_equal(pg.v[0].key, "pre/a b+c.raw");
	assert_int_equal(pg.v[0].size, 1048576);
	assert_string_equal(pg.v[0].etag, "d41d8cd98f00b204e9800998ecf8427e");
	assert_int_equal(pg.v[0].mtime, 1706704496);
	assert_string_equal(pg.v[1].key, "pre/x y&z.qcow2");
	assert_string_equal(pg.v[1].etag, "abc-2");
	assert_int_equal(pg.v[1].mtime, 0);
	assert_string_equal(pg.v[2].key, "pre/\xc3\xa9t\xc3\xa9.img");
	assert_int_equal(pg.v[2].size, UINT64_MAX);
	assert_string_equal(pg.v[2].etag, "");
	idd_s3_page_free(&pg);

	/* without encoding-type=url keys are taken as they are; numeric references */
	const char *plain = "<ListBucketResult><IsTruncated>false</IsTruncated>"
	                    "<Contents><Key>a+b%20&#233;&#x41;</Key><Size>7</Size></Contents>"
	                    "</ListBucketResult>";
	assert_int_equal(idd_s3_list_parse("p", plain, strlen(plain), false, &pg, &err), IDD_OK);
	assert_false(pg.truncated);
	assert_int_equal(pg.n, 1);
	assert_string_equal(pg.v[0].key, "a+b%20\xc3\xa9"
	                                 "A");
	idd_s3_page_free(&pg);
	const char *empty = "<ListBucketResult><Name>b</Name><Prefix/><IsTruncated>false</IsTruncated>"
	                    "</ListBucketResult>";
	assert_int_equal(idd_s3_list_parse("p", empty, strlen(empty), true, &pg, &err), IDD_OK);
	assert_int_equal(pg.n, 0);
	idd_s3_page_free(&pg);

	/* malformed answers are refused, never half-read */
	static const char *const bad[] = {
		"<Error><Code>AccessDenied</Code></Error>",
		"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>", /* no token */
		"<ListBucketResult><Contents><Key>a</Key></Contents></ListBucketResult>", /* no size */
		"<ListBucketResult><Contents><Key>a</Key><Size>-1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key>a</Key><Size>18446744073709551616</Size></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key>a%00b</Key><Size>1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key>a%4</Key><Size>1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key>a&#0;</Key><Size>1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key>a&bogus;</Key><Size>1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key></Key><Size>1</Size></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key>a</Key><Size>1</Size><LastModified>yesterday</LastModified></Contents></ListBucketResult>",
		"<ListBucketResult><Contents><Key>a</Key><Size>1</Size>", /* cut short */
		"",
	};
	for (size_t i = 0; i < IDD_ARRAY_LEN(bad); i++) {
		assert_int_equal(idd_s3_list_parse("p", bad[i], strlen(bad[i]), true, &pg, &err), IDD_ECORRUPT);
		assert_null(pg.v);
	}
	/* every prefix of a valid page parses or fails cleanly */
	for (size_t n = 0; n <= strlen(xml); n++) {
		int rc = idd_s3_list_parse("p", xml, n, true, &pg, &err);
		if (rc == IDD_OK)
			idd_s3_page_free(&pg);
		else
			assert_int_equal(rc, IDD_ECORRUPT);
	}
}

static void test_error_body_and_time(void **state)
{
	(void)state;
	const char *body = "<?xml version=\"1.0\"?><Error><Code>SlowDown</Code>"
	                   "<Message>Please reduce\x01 your request rate.</Message></Error>";
	char code[16], msg[64];
	idd_s3_error_parse(body, strlen(body), code, sizeof code, msg, sizeof msg);
	assert_string_equal(code, "SlowDown");
	assert_string_equal(msg, "Please reduce your request rate."); /* control bytes dropped */
	idd_s3_error_parse(body, strlen(body), code, 5, msg, 8);
	assert_string_equal(code, "Slow");
	assert_string_equal(msg, "Please ");
	idd_s3_error_parse("nonsense", 8, code, sizeof code, msg, sizeof msg);
	assert_string_equal(code, "");
	idd_s3_error_parse(NULL, 0, code, sizeof code, msg, sizeof msg);
	assert_string_equal(msg, "");
	int64_t t;
	assert_true(idd_s3_parse_time("2024-01-31T12:34:56Z", &t));
	assert_int_equal(t, 1706704496);
	assert_true(idd_s3_parse_time("2024-01-31T12:34:56.123456Z", &t));
	assert_int_equal(t, 1706704496);
	assert_false(idd_s3_parse_time("2024-01-31 12:34:56Z", &t));
	assert_false(idd_s3_parse_time("2024-13-01T00:00:00Z", &t));
	assert_false(idd_s3_parse_time("2024-01-31T12:34:56", &t));
	assert_false(idd_s3_parse_time("2024-01-31T12:34:56.Z", &t));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_location),
		cmocka_unit_test(test_credentials_file),
		cmocka_unit_test(test_canonical_query),
		cmocka_unit_test(test_config),
		cmocka_unit_test(test_list_parse),
		cmocka_unit_test(test_error_body_and_time),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
