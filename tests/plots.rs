//! matplotlib in the Python guest: its data granted, the Agg backend, `plt.show()` saving
//! figures into the scratch directory, real PNGs coming back.

mod common;

use base64::Engine as _;
use common::{assert_status, request, sandbox};
use wsbx::{Language, Status};

/// Decodes `bytes` as a PNG and says how many distinct pixel values it has.
fn distinct_pixels(bytes: &[u8]) -> usize {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("a PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("a size")];
    let info = reader.next_frame(&mut buf).expect("a PNG frame");
    let pixel = info.color_type.samples() * info.bit_depth as usize / 8;
    let mut seen: Vec<&[u8]> = buf[..info.buffer_size()].chunks(pixel.max(1)).collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

const PLOT: &str = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.title('squares')\nplt.show()\nprint(plt.get_backend())";

#[test]
fn plt_show_saves_each_figure_as_a_png_that_comes_back() {
    let mut req = request(Language::Python, PLOT);
    req.limits.timeout_ms = 60_000;
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "module://wsbx_matplotlib\n");
    let files = r.files.unwrap();
    let figure = files.iter().find(|f| f.path == "figure-1.png").unwrap_or_else(|| panic!("{files:?}"));
    assert_eq!(figure.mime_type, "image/png");
    let bytes = base64::engine::general_purpose::STANDARD.decode(&figure.content).unwrap();
    assert_eq!(bytes.len() as u64, figure.size);
    // Axes, a line and text in several shades: not a blank canvas.
    assert!(distinct_pixels(&bytes) > 20, "{} distinct pixels", distinct_pixels(&bytes));
}

#[test]
fn two_shows_give_two_figures_and_savefig_works_too() {
    let code = "import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nplt.bar(['a', 'b'], [3, 5]); plt.savefig('bars.png'); plt.show()";
    let mut req = request(Language::Python, code);
    req.limits.timeout_ms = 60_000;
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    let mut pngs: Vec<String> = r.files.unwrap().into_iter().map(|f| f.path).filter(|p| p.ends_with(".png")).collect();
    pngs.sort();
    assert_eq!(pngs, ["bars.png", "figure-1.png", "figure-2.png"]);
}

/// A figure that cannot be drawn makes `plt.show()` raise, as matplotlib would; it is closed
/// with the rest, so the next `show()` saves the next figure, which takes the first free number.
#[test]
fn a_figure_that_fails_to_draw_does_not_block_the_next_show() {
    let code = "import matplotlib.pyplot as plt\n\
                plt.figure(); plt.title(r'$\\foo$')\n\
                try:\n    plt.show()\nexcept ValueError:\n    print('the bad one raised')\n\
                plt.figure(); plt.plot([1, 2]); plt.show()\n\
                print(plt.get_fignums())";
    let mut req = request(Language::Python, code);
    req.limits.timeout_ms = 60_000;
    req.return_files = true;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "the bad one raised\n[]\n", "{r:#?}");
    let pngs: Vec<String> = r.files.unwrap().into_iter().map(|f| f.path).filter(|p| p.ends_with(".png")).collect();
    assert_eq!(pngs, ["figure-1.png"]);
}

/// `plt.savefig` asks for a redraw after saving (for a window, which a sandbox has none of);
/// it happens when the canvas's pixels are next read, not at once, so a saved figure is drawn
/// once. Whoever reads the pixels after asking for a redraw still gets the figure as it is.
#[test]
fn savefig_draws_once_and_pixels_read_after_draw_idle_are_current() {
    let code = "import matplotlib.pyplot as plt, numpy as np\n\
                from matplotlib.figure import Figure\n\
                draws = 0\n\
                original = Figure.draw\n\
                def counted(self, renderer):\n    global draws\n    draws += 1\n    return original(self, renderer)\n\
                Figure.draw = counted\n\
                fig = plt.figure(); plt.plot([1, 4, 9]); plt.savefig('a.png')\n\
                print(draws)\n\
                fig.set_facecolor('red'); fig.canvas.draw_idle()\n\
                print(draws)\n\
                print(tuple(int(v) for v in np.asarray(fig.canvas.buffer_rgba())[0, 0]), draws)\n\
                fig.canvas.draw_idle(); fig.canvas.draw(); fig.canvas.buffer_rgba()\n\
                print(draws)";
    let mut req = request(Language::Python, code);
    req.limits.timeout_ms = 60_000;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "1\n1\n(255, 0, 0, 255) 2\n3\n", "{r:#?}");
}

/// matplotlib's fonts are read into memory whole, and those the snapshot's set-up loaded are
/// still loaded in a run. Text still comes out in every format: the PDF and PS backends embed a
/// font by its path, which `str(font.fname)` still is. A font over 8 MiB is read from its file.
#[test]
fn fonts_are_read_from_memory_and_every_format_still_gets_its_text() {
    let code = "import io, matplotlib, matplotlib.pyplot as plt\n\
                from matplotlib import font_manager as fm\n\
                from matplotlib.font_manager import FontProperties\n\
                print(fm._get_font.cache_info().currsize > 0)\n\
                path = fm.findfont('DejaVu Sans')\n\
                font = fm.get_font(path)\n\
                print(isinstance(font.fname, io.BytesIO), str(font.fname) == path)\n\
                matplotlib.rcParams['pdf.fonttype'] = 42\n\
                plt.plot([1, 4, 9]); plt.title('squares')\n\
                for ext in 'png', 'pdf', 'ps', 'svg':\n    plt.savefig('plot.' + ext)\n\
                print(b'DejaVuSans' in open('plot.pdf', 'rb').read(), b'DejaVuSans' in open('plot.ps', 'rb').read())\n\
                with open('big.ttf', 'wb') as big:\n    big.write(open(path, 'rb').read() + bytes(9 << 20))\n\
                plt.xlabel('big', fontproperties=FontProperties(fname='big.ttf')); plt.savefig('big.png')\n\
                print(type(fm.get_font('big.ttf').fname).__name__)";
    let mut req = request(Language::Python, code);
    req.limits.timeout_ms = 60_000;
    let r = sandbox().run(&req);
    assert_status(&r, Status::Ok);
    assert_eq!(r.stdout, "True\nTrue True\nTrue True\nstr\n", "{r:#?}");
}

#[test]
fn wsbx_exec_out_dir_gets_the_figure() {
    let out = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_wsbx"))
        .args(["exec", "--lang", "python", "--timeout", "60", "--out-dir", out.path().to_str().unwrap(), "-c", PLOT])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(out.path().join("figure-1.png")).unwrap();
    assert!(distinct_pixels(&bytes) > 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_http_the_plot_comes_back_as_image_png() {
    let server = common::server::Server::start(&[]);
    let body = serde_json::json!({"language": "python", "code": PLOT, "return_files": true});
    let v: serde_json::Value = reqwest::Client::new().post(server.url("/v1/exec")).json(&body).send().await.unwrap().json().await.unwrap();
    assert_eq!(v["status"], "ok", "{v}");
    let files = v["files"].as_array().unwrap();
    let figure = files.iter().find(|f| f["path"] == "figure-1.png").unwrap_or_else(|| panic!("{v}"));
    assert_eq!(figure["mime_type"], "image/png");
    let bytes = base64::engine::general_purpose::STANDARD.decode(figure["content"].as_str().unwrap()).unwrap();
    assert_eq!(figure["size"].as_u64(), Some(bytes.len() as u64));
    assert!(distinct_pixels(&bytes) > 20);
}
