/* Decode only a rectangle of a JPEG, optionally at 1/2, 1/4 or 1/8 DCT scale (libjpeg-turbo >= 1.5).
 *
 * Rows above the rectangle are skipped with jpeg_skip_scanlines (no IDCT/colour conversion, only
 * entropy decoding), rows below are never read, and columns outside it are skipped with
 * jpeg_crop_scanline, which widens the window to iMCU boundaries: the caller gets the actual window
 * back and crops inside it. Built by data/jpegcrop.py on first use.
 */
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <jpeglib.h>

struct err_mgr {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
};

static void on_error(j_common_ptr cinfo) {
    /* the default handler calls exit(): jump back and report failure instead */
    longjmp(((struct err_mgr *)cinfo->err)->jump, 1);
}

static void no_output(j_common_ptr cinfo) { (void)cinfo; }

/* Decodes rows [y0, y0 + h) and at least columns [x0, x0 + w) of the image scaled by 1/denom into
 * dst (row stride `stride` bytes, RGB). info receives {first column decoded, columns decoded,
 * scaled height, scaled width}. Returns 0 on success, 1 for progressive/multi-scan files (the caller
 * falls back to a full decode: they entropy-decode the whole file anyway), 2 when the window does not
 * fit dst or the box is outside the image, -1 on a libjpeg error. */
int crop_decode(const uint8_t *src, uint64_t size, uint8_t *dst, uint64_t dst_size, uint32_t stride,
                uint32_t denom, uint32_t y0, uint32_t x0, uint32_t h, uint32_t w, uint32_t *info) {
    struct jpeg_decompress_struct cinfo;
    struct err_mgr err;
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.output_message = no_output;
    if (setjmp(err.jump)) {
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, src, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if (jpeg_has_multiple_scans(&cinfo)) {
        jpeg_destroy_decompress(&cinfo);
        return 1;
    }
    cinfo.out_color_space = JCS_RGB;
    cinfo.dct_method = JDCT_IFAST; /* what ffcv's imdecode uses (TJFLAG_FASTDCT) */
    cinfo.scale_num = 1;
    cinfo.scale_denom = denom;
    jpeg_start_decompress(&cinfo);
    JDIMENSION sh = cinfo.output_height, sw = cinfo.output_width;
    if (y0 + h > sh || x0 + w > sw || h == 0 || w == 0) {
        jpeg_abort_decompress(&cinfo);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    JDIMENSION xoff = x0, cw = w;
    jpeg_crop_scanline(&cinfo, &xoff, &cw);
    if ((uint64_t)cw * 3 > stride || (uint64_t)stride * h > dst_size) {
        jpeg_abort_decompress(&cinfo);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    if (y0 > 0 && jpeg_skip_scanlines(&cinfo, y0) != y0) {
        jpeg_abort_decompress(&cinfo);
        jpeg_destroy_decompress(&cinfo);
        return -1;
    }
    JDIMENSION done = 0;
    while (done < h) {
        JSAMPROW row = dst + (uint64_t)done * stride;
        JDIMENSION n = jpeg_read_scanlines(&cinfo, &row, 1);
        if (n == 0) break;
        done += n;
    }
    info[0] = xoff;
    info[1] = cw;
    info[2] = sh;
    info[3] = sw;
    jpeg_abort_decompress(&cinfo); /* the rows below the crop are never decoded */
    jpeg_destroy_decompress(&cinfo);
    return done == h ? 0 : -1;
}

/* Bilinear resize of the box src[i:i+h, j:j+w] (RGB rows of src_stride bytes) into dst (oh x ow RGB,
 * contiguous); the arithmetic of data.ffcv_backend.bilinear_resize (pixel centres aligned, 11-bit
 * fixed point, like cv2 INTER_LINEAR), bit for bit: without intermediate rounding the sum is the same
 * when the vertical pass comes first, and that pass is contiguous (vectorised) while the horizontal
 * one gathers. Returns -1 when out of memory. */
int bilinear_resize(const uint8_t *src, uint32_t src_stride, uint32_t i, uint32_t j, uint32_t h, uint32_t w,
                    uint8_t *dst, uint32_t oh, uint32_t ow) {
    int32_t *mem = malloc(sizeof(int32_t) * ((size_t)ow * 3 + (size_t)w * 3));
    if (!mem) return -1;
    int32_t *xa = mem, *xb = mem + ow, *wx = mem + 2 * ow, *col = mem + 3 * ow;
    double sy = (double)h / oh, sx = (double)w / ow;
    for (uint32_t x = 0; x < ow; x++) {
        double fx = (x + 0.5) * sx - 0.5;
        fx = fx < 0.0 ? 0.0 : (fx > w - 1.0 ? w - 1.0 : fx);
        int32_t x0 = (int32_t)fx;
        xa[x] = 3 * x0; /* relative to column j, in bytes */
        xb[x] = 3 * (x0 + 1 < (int32_t)w - 1 ? x0 + 1 : (int32_t)w - 1);
        wx[x] = (int32_t)((fx - x0) * 2048 + 0.5);
    }
    for (uint32_t y = 0; y < oh; y++) {
        double fy = (y + 0.5) * sy - 0.5;
        fy = fy < 0.0 ? 0.0 : (fy > h - 1.0 ? h - 1.0 : fy);
        int32_t y0 = (int32_t)fy;
        int32_t wy = (int32_t)((fy - y0) * 2048 + 0.5), uy = 2048 - wy;
        uint32_t y1 = y0 + 1 < (int32_t)h - 1 ? y0 + 1 : h - 1;
        const uint8_t *r0 = src + (size_t)(i + y0) * src_stride + 3 * (size_t)j;
        const uint8_t *r1 = src + (size_t)(i + y1) * src_stride + 3 * (size_t)j;
        for (uint32_t k = 0; k < 3 * w; k++) col[k] = r0[k] * uy + r1[k] * wy;
        uint8_t *o = dst + (size_t)y * ow * 3;
        for (uint32_t x = 0; x < ow; x++) {
            const int32_t *a = col + xa[x], *b = col + xb[x];
            int32_t t = wx[x], u = 2048 - t;
            o[3 * x] = (uint8_t)((a[0] * u + b[0] * t + (1 << 21)) >> 22);
            o[3 * x + 1] = (uint8_t)((a[1] * u + b[1] * t + (1 << 21)) >> 22);
            o[3 * x + 2] = (uint8_t)((a[2] * u + b[2] * t + (1 << 21)) >> 22);
        }
    }
    free(mem);
    return 0;
}
