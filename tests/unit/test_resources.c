/* Unit test of services/reconciler/resources.c: the table of watched
 * resources must hold exactly one row per CustomResourceDefinition in
 * config/crds/ (same group, plural, kind, scope, and the CRD's storage
 * version) plus core namespaces, and nothing else (DESIGN.md §4).
 *
 * The CRD files are read at run time relative to the repository root, where
 * scripts/test.sh runs every test. Only the few fields needed are read, with
 * a small indentation-tracking reader of the block YAML the files use: each
 * line's key gets a dotted path (spec.names.kind), list items ("- name: x")
 * continue the path of their list (spec.versions.name), and block scalars
 * (|, |-, >) are skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../services/reconciler/resources.c"

#define CRD_GLOB "config/crds/*.yaml"
#define FIELD_MAX 128
#define DEPTH_MAX 32
#define VERSIONS_MAX 8

typedef struct {
    char name[FIELD_MAX];
    int served;
    int storage;
} crd_version;

typedef struct {
    char file[256];
    char group[FIELD_MAX];
    char plural[FIELD_MAX];
    char kind[FIELD_MAX];
    char scope[FIELD_MAX];
    crd_version versions[VERSIONS_MAX];
    int nversions;
} crd_info;

static void copy_field(char *dst, const char *src, size_t n)
{
    /* strip matching quotes */
    if (n >= 2 && (src[0] == '\'' || src[0] == '"') && src[n - 1] == src[0]) {
        src++;
        n -= 2;
    }
    if (n >= FIELD_MAX)
        n = FIELD_MAX - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Read the fields of one CRD file into *out. Returns 0, or -1 when the file
 * cannot be read. */
static int crd_read(const char *path, crd_info *out)
{
    struct {
        int indent;
        char key[FIELD_MAX];
    } stack[DEPTH_MAX];
    int depth = 0, skip_deeper_than = -1;
    char line[4096];
    FILE *f = fopen(path, "r");

    if (f == NULL)
        return -1;
    memset(out, 0, sizeof(*out));
    snprintf(out->file, sizeof(out->file), "%s", path);
    while (fgets(line, sizeof(line), f) != NULL) {
        char *p = line, *colon, *val, pathbuf[512];
        size_t n = strlen(line), vlen;
        int indent;

        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
            line[--n] = '\0';
        while (*p == ' ')
            p++;
        indent = (int)(p - line);
        if (*p == '\0' || *p == '#')
            continue;
        if (skip_deeper_than >= 0) {
            if (indent > skip_deeper_than)
                continue;   /* inside a block scalar */
            skip_deeper_than = -1;
        }
        if (strcmp(p, "---") == 0)
            continue;
        if (p[0] == '-' && p[1] == ' ') {
            /* a list item: its first key sits two columns right of the dash */
            p += 2;
            while (*p == ' ')
                p++;
            indent = (int)(p - line);
        }
        colon = strchr(p, ':');
        if (colon == NULL || (colon[1] != '\0' && colon[1] != ' '))
            continue;       /* a scalar list item or a continuation line */
        while (depth > 0 && stack[depth - 1].indent >= indent)
            depth--;
        if (depth == DEPTH_MAX)
            continue;
        stack[depth].indent = indent;
        copy_field(stack[depth].key, p, (size_t)(colon - p));
        depth++;
        val = colon + 1;
        while (*val == ' ')
            val++;
        vlen = strlen(val);
        if (val[0] == '|' || val[0] == '>') {
            skip_deeper_than = indent;
            continue;
        }
        pathbuf[0] = '\0';
        for (int i = 0; i < depth; i++) {
            size_t used = strlen(pathbuf);
            snprintf(pathbuf + used, sizeof(pathbuf) - used, "%s%s", i ? "." : "", stack[i].key);
        }
        if (strcmp(pathbuf, "spec.group") == 0) {
            copy_field(out->group, val, vlen);
        } else if (strcmp(pathbuf, "spec.names.plural") == 0) {
            copy_field(out->plural, val, vlen);
        } else if (strcmp(pathbuf, "spec.names.kind") == 0) {
            copy_field(out->kind, val, vlen);
        } else if (strcmp(pathbuf, "spec.scope") == 0) {
            copy_field(out->scope, val, vlen);
        } else if (strcmp(pathbuf, "spec.versions.name") == 0 && out->nversions < VERSIONS_MAX) {
            copy_field(out->versions[out->nversions].name, val, vlen);
            out->nversions++;
        } else if (strcmp(pathbuf, "spec.versions.served") == 0 && out->nversions > 0) {
            out->versions[out->nversions - 1].served = strcmp(val, "true") == 0;
        } else if (strcmp(pathbuf, "spec.versions.storage") == 0 && out->nversions > 0) {
            out->versions[out->nversions - 1].storage = strcmp(val, "true") == 0;
        }
    }
    fclose(f);
    return 0;
}

static crd_info *crds;
static size_t ncrds;

static int group_setup(void **state)
{
    glob_t g;

    (void)state;
    if (glob(CRD_GLOB, 0, NULL, &g) != 0) {
        fprintf(stderr, "no %s: run the test from the repository root\n", CRD_GLOB);
        return -1;
    }
    crds = calloc(g.gl_pathc, sizeof(*crds));
    if (crds == NULL) {
        globfree(&g);
        return -1;
    }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        if (crd_read(g.gl_pathv[i], &crds[ncrds]) != 0) {
            fprintf(stderr, "cannot read %s\n", g.gl_pathv[i]);
            globfree(&g);
            return -1;
        }
        ncrds++;
    }
    globfree(&g);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    free(crds);
    crds = NULL;
    ncrds = 0;
    return 0;
}

/* The reader itself, on a file written here: the fields come from the right
 * places and nested look-alikes (a printer column's name, a property called
 * kind, a block scalar) are ignored. */
static void test_reader(void **state)
{
    static const char text[] =
        "apiVersion: apiextensions.k8s.io/v1\n"
        "kind: CustomResourceDefinition\n"
        "metadata:\n"
        "  name: things.example.io\n"
        "spec:\n"
        "  group: example.io\n"
        "  names:\n"
        "    kind: Thing\n"
        "    listKind: ThingList\n"
        "    plural: things\n"
        "  scope: Namespaced\n"
        "  versions:\n"
        "    - name: v1alpha1\n"
        "      served: false\n"
        "      storage: false\n"
        "    - name: v1\n"
        "      additionalPrinterColumns:\n"
        "        - jsonPath: .spec.x\n"
        "          name: Fake\n"
        "      schema:\n"
        "        openAPIV3Schema:\n"
        "          description: |-\n"
        "            spec:\n"
        "              group: wrong.io\n"
        "          properties:\n"
        "            kind:\n"
        "              type: string\n"
        "      served: true\n"
        "      storage: true\n";
    char path[] = "/tmp/test_resources.XXXXXX";
    crd_info c;
    int fd = mkstemp(path);
    FILE *f;

    (void)state;
    assert_true(fd >= 0);
    f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, sizeof(text) - 1, f), sizeof(text) - 1);
    fclose(f);
    assert_int_equal(crd_read(path, &c), 0);
    unlink(path);
    assert_string_equal(c.group, "example.io");
    assert_string_equal(c.plural, "things");
    assert_string_equal(c.kind, "Thing");
    assert_string_equal(c.scope, "Namespaced");
    assert_int_equal(c.nversions, 2);
    assert_string_equal(c.versions[0].name, "v1alpha1");
    assert_false(c.versions[0].served);
    assert_string_equal(c.versions[1].name, "v1");
    assert_true(c.versions[1].served);
    assert_true(c.versions[1].storage);
}

/* Every CRD file was read completely and follows the file naming rule
 * <group>_<plural>.yaml. */
static void test_crd_files_complete(void **state)
{
    (void)state;
    assert_true(ncrds > 0);
    for (size_t i = 0; i < ncrds; i++) {
        const crd_info *c = &crds[i];
        const char *base = strrchr(c->file, '/');
        char want[300];
        int storage = 0;

        print_message("%s: %s %s %s %s\n", c->file, c->group, c->plural, c->kind, c->scope);
        assert_true(c->group[0] != '\0');
        assert_true(c->plural[0] != '\0');
        assert_true(c->kind[0] != '\0');
        assert_true(strcmp(c->scope, "Cluster") == 0 || strcmp(c->scope, "Namespaced") == 0);
        assert_true(c->nversions > 0);
        for (int v = 0; v < c->nversions; v++)
            storage += c->versions[v].storage;
        assert_int_equal(storage, 1);
        snprintf(want, sizeof(want), "%s_%s.yaml", c->group, c->plural);
        assert_string_equal(base ? base + 1 : c->file, want);
    }
}

/* One row per CRD with the same group, plural, kind and scope, watching the
 * storage version (served). */
static void test_every_crd_has_one_row(void **state)
{
    (void)state;
    for (size_t i = 0; i < ncrds; i++) {
        const crd_info *c = &crds[i];
        const ks_reflector_resource *row = NULL;
        int rows = 0;

        for (size_t k = 0; k < rec_nresources; k++) {
            if (strcmp(rec_resources[k].group, c->group) == 0 &&
                strcmp(rec_resources[k].resource, c->plural) == 0) {
                row = &rec_resources[k];
                rows++;
            }
        }
        if (rows != 1)
            print_error("%s: %d rows for %s/%s\n", c->file, rows, c->group, c->plural);
        assert_int_equal(rows, 1);
        assert_string_equal(row->kind, c->kind);
        assert_int_equal(row->namespaced, strcmp(c->scope, "Namespaced") == 0);
        for (int v = 0; v < c->nversions; v++) {
            if (c->versions[v].storage) {
                assert_string_equal(row->version, c->versions[v].name);
                assert_true(c->versions[v].served);
            }
        }
    }
}

/* Core namespaces, then nothing that config/crds/ does not define. */
static void test_no_other_rows(void **state)
{
    int namespaces = 0;

    (void)state;
    for (size_t k = 0; k < rec_nresources; k++) {
        const ks_reflector_resource *row = &rec_resources[k];
        int found = 0;

        assert_non_null(row->group);
        assert_non_null(row->version);
        assert_non_null(row->resource);
        assert_non_null(row->kind);
        if (row->group[0] == '\0') {
            assert_string_equal(row->version, "v1");
            assert_string_equal(row->resource, "namespaces");
            assert_string_equal(row->kind, "Namespace");
            assert_int_equal(row->namespaced, 0);
            namespaces++;
            continue;
        }
        for (size_t i = 0; i < ncrds; i++)
            if (strcmp(crds[i].group, row->group) == 0 && strcmp(crds[i].plural, row->resource) == 0)
                found = 1;
        if (!found)
            print_error("row %s/%s has no CRD in config/crds/\n", row->group, row->resource);
        assert_true(found);
    }
    assert_int_equal(namespaces, 1);
    assert_int_equal(rec_nresources, ncrds + 1);
    /* services/reconciler/main.c has 32 reflector slots */
    assert_true(rec_nresources <= 32);
}

/* Every row gives a valid collection path. */
static void test_paths(void **state)
{
    char path[512];

    (void)state;
    for (size_t k = 0; k < rec_nresources; k++) {
        char want[512];
        const ks_reflector_resource *row = &rec_resources[k];

        assert_int_equal(ks_reflector_path(row, path, sizeof(path)), KS_OK);
        if (row->group[0] == '\0')
            snprintf(want, sizeof(want), "/api/%s/%s", row->version, row->resource);
        else
            snprintf(want, sizeof(want), "/apis/%s/%s/%s", row->group, row->version, row->resource);
        assert_string_equal(path, want);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reader),
        cmocka_unit_test(test_crd_files_complete),
        cmocka_unit_test(test_every_crd_has_one_row),
        cmocka_unit_test(test_no_other_rows),
        cmocka_unit_test(test_paths),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
