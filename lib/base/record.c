/* record.c - statistics structs written and read as flat JSON objects,
 * driven by a field table (name, type, offset). */
#include "base/error.h"
#include "base/util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

uint64_t idd_field_u64(const idd_field *f, const void *rec)
{
	uint64_t v;
	memcpy(&v, (const char *)rec + f->offset, sizeof v);
	return v;
}

size_t idd_record_json(const idd_record_type *t, const void *rec, char *out, size_t len)
{
	size_t need = 0;
	for (size_t i = 0; i <= t->n_fields; i++) {
		char item[128];
		int k = i == t->n_fields
		            ? snprintf(item, sizeof item, "}")
		            : snprintf(item, sizeof item, "%s\"%s\":%" PRIu64, i ? "," : "{",
		                       t->fields[i].name, idd_field_u64(&t->fields[i], rec));
		if (k > 0 && need < len) {
			size_t copy = IDD_MIN((size_t)k, len - need - 1);
			memcpy(out + need, item, copy);
			out[need + copy] = 0;
		}
		need += k > 0 ? (size_t)k : 0;
	}
	return need;
}

int idd_record_parse(const idd_record_type *t, const char *text, void *rec, idd_error *err)
{
	for (size_t i = 0; i < t->n_fields; i++) {
		const idd_field *f = &t->fields[i];
		char key[128];
		snprintf(key, sizeof key, "\"%s\":", f->name);
		const char *p = strstr(text, key);
		if (!p)
			return idd_fail_code(err, IDD_ECORRUPT, "no counter '%s'", f->name);
		p += strlen(key);
		char *end;
		errno = 0;
		unsigned long long v = *p >= '0' && *p <= '9' ? strtoull(p, &end, 10) : 0;
		if (!(*p >= '0' && *p <= '9') || errno)
			return idd_fail_code(err, IDD_ECORRUPT, "counter '%s' is not a number", f->name);
		uint64_t u = v;
		memcpy((char *)rec + f->offset, &u, sizeof u);
	}
	return IDD_OK;
}
