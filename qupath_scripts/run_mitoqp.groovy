/**
 * Run mitoqp on the open image (or each image of a project) from inside QuPath, then import the result.
 *
 *   QuPath script -p project.qpproj -a /path/to/output -s run_mitoqp.groovy [-a "--model NAME --mpp 0.25"]
 *
 * The first argument is the output folder (default: a "mitoqp" folder beside the image); a second one is
 * passed to `mitoqp run` as extra options. `mitoqp` must be on the PATH QuPath was started with (or set
 * MITOQP to its full path). The results are then imported as import_mitoqp.groovy does (figures, hotspot,
 * density; earlier mitoqp objects replaced, the rest kept).
 */
import qupath.lib.objects.PathObject

def server = getCurrentServer()
def image = new File(server.getURIs().iterator().next())
def out = (args != null && args.length > 0) ? new File(args[0]) : new File(image.getParentFile(), 'mitoqp')
def extra = (args != null && args.length > 1) ? args[1].trim().split(/\s+/) as List : []
def exe = System.getenv('MITOQP') ?: 'mitoqp'
def cmd = [exe, 'run', '-q', image.getAbsolutePath(), '-o', out.getAbsolutePath()] + extra
def proc = new ProcessBuilder(cmd).redirectErrorStream(true).start()
def log = proc.inputStream.text
if (proc.waitFor() != 0) {
    println "mitoqp failed on ${image.getName()}: ${log.readLines().findAll { it.startsWith('error') || it.contains(': error') }.join('; ') ?: log.readLines().last()}"
    return
}
def MITOQP = ['Mitotic figure', 'Mitotic figure (atypical)', 'Mitotic figure (normal)', 'Mitotic hotspot',
              'Mitotic density', 'Tissue (mitoqp)'] as Set
def stem = image.getName().replaceFirst(/(?i)\.ome\.tiff?$/, '').replaceFirst(/\.[^.]+$/, '')
removeObjects(getAllObjects().findAll { PathObject p -> p.getPathClass() != null && MITOQP.contains(p.getPathClass().toString()) }, true)
['.tissue.geojson', '.geojson', '.hotspot.geojson', '.density.geojson'].each { suffix ->
    def f = new File(out, stem + suffix)
    if (f.exists())
        importObjectsFromFile(f.getAbsolutePath())
}
println "mitoqp: ${log.readLines().find { it.startsWith(stem + ':') } ?: 'done'}"
